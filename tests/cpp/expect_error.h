// Asserts that a call throws the c10 error type E (ValueError, TypeError, ...)
// with a message containing `needle` (the argument name and its value).
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <string>

namespace quantext_test {

template <typename E = c10::Error, typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error, expected one mentioning " << needle;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find(needle), std::string::npos) << e.what_without_backtrace();
  } catch (const c10::Error& e) {
    ADD_FAILURE() << "wrong error type for " << needle << ": " << e.what_without_backtrace();
  }
}

}  // namespace quantext_test
