// Unit tests of the last-error storage (util/status): what is stored for messages around the
// buffer size, where a long message is cut, and messages built from the current message.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <cstring>
#include <string>

#include "util/status.hpp"

using fluxus::kErrorMessageMax;
using fluxus::last_error_message;
using fluxus::set_error;
using fluxus::set_errorf;

namespace {

constexpr size_t kMarkerLen = sizeof fluxus::kTruncationMarker - 1;
constexpr size_t kKeep = kErrorMessageMax - 1 - kMarkerLen;  // bytes kept before the marker

bool ends_with_marker(const std::string &s) {
    return s.size() >= kMarkerLen &&
           s.compare(s.size() - kMarkerLen, kMarkerLen, fluxus::kTruncationMarker) == 0;
}

void test_set_error_returns_the_code_and_stores_the_message(void **) {
    assert_int_equal(set_error(FLUXUS_ERANGE, "too big"), FLUXUS_ERANGE);
    assert_string_equal(last_error_message(), "too big");
    assert_int_equal(set_error(FLUXUS_EINVAL, std::string("from a string")), FLUXUS_EINVAL);
    assert_string_equal(last_error_message(), "from a string");
    assert_int_equal(set_error(FLUXUS_EINVAL, static_cast<const char *>(nullptr)), FLUXUS_EINVAL);
    assert_string_equal(last_error_message(), "");
    set_error(FLUXUS_EINVAL, "x");
    fluxus::clear_error();
    assert_string_equal(last_error_message(), "");
}

void test_a_message_that_fits_is_stored_whole(void **) {
    for (size_t len : {kErrorMessageMax - 2, kErrorMessageMax - 1}) {
        std::string m(len, 'a');
        set_error(FLUXUS_EINVAL, m);
        assert_string_equal(last_error_message(), m.c_str());
        set_error(FLUXUS_EINVAL, m.c_str());
        assert_string_equal(last_error_message(), m.c_str());
    }
}

void test_a_message_one_byte_too_long_is_cut_with_the_marker(void **) {
    for (size_t len : {kErrorMessageMax, kErrorMessageMax + 1, 10 * kErrorMessageMax}) {
        std::string m(len, 'b');
        set_error(FLUXUS_EINVAL, m);
        std::string got = last_error_message();
        assert_int_equal(got.size(), kErrorMessageMax - 1);
        assert_true(ends_with_marker(got));
        assert_true(got.compare(0, kKeep, m, 0, kKeep) == 0);
    }
}

// A character of 2, 3 or 4 bytes placed so that it straddles the cut at every offset: the cut
// moves back to the character's first byte, never into it.
void test_a_cut_never_splits_a_utf8_character(void **) {
    const char *chars[] = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"};
    for (const char *ch : chars) {
        size_t n = strlen(ch);
        for (size_t lead = kKeep - n - 1; lead <= kKeep; ++lead) {
            std::string m(lead, 'c');
            m += ch;
            m += std::string(100, 'd');
            set_error(FLUXUS_EINVAL, m);
            std::string got = last_error_message();
            assert_true(ends_with_marker(got));
            std::string body = got.substr(0, got.size() - kMarkerLen);
            // Either the whole character fits before the cut, or none of it is kept.
            if (lead + n <= kKeep)
                assert_true(body.compare(0, lead + n, m, 0, lead + n) == 0);
            else
                assert_int_equal(body.size(), lead);
            assert_true(body.compare(0, body.size(), m, 0, body.size()) == 0);
        }
    }
}

void test_a_formatted_message_too_long_is_cut_with_the_marker(void **) {
    std::string arg(2 * kErrorMessageMax, 'e');
    assert_int_equal(set_errorf(FLUXUS_ERANGE, "value %s", arg.c_str()), FLUXUS_ERANGE);
    std::string got = last_error_message();
    assert_int_equal(got.size(), kErrorMessageMax - 1);
    assert_true(ends_with_marker(got));
    assert_true(got.compare(0, 6, "value ") == 0);
}

// Messages that wrap the current one (as the spec builder does) may pass it straight back in.
void test_a_message_may_be_built_from_the_current_one(void **) {
    set_error(FLUXUS_EINVAL, "inner detail");
    set_errorf(FLUXUS_EINVAL, "outer: %s", last_error_message());
    assert_string_equal(last_error_message(), "outer: inner detail");
    set_error(FLUXUS_EINVAL, last_error_message() + 7);
    assert_string_equal(last_error_message(), "inner detail");

    std::string long_msg(kErrorMessageMax - 1, 'f');
    set_error(FLUXUS_EINVAL, long_msg);
    set_errorf(FLUXUS_EINVAL, "outer: %s", last_error_message());
    std::string got = last_error_message();
    assert_int_equal(got.size(), kErrorMessageMax - 1);
    assert_true(got.compare(0, 7, "outer: ") == 0);
    assert_true(ends_with_marker(got));
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_error_returns_the_code_and_stores_the_message),
        cmocka_unit_test(test_a_message_that_fits_is_stored_whole),
        cmocka_unit_test(test_a_message_one_byte_too_long_is_cut_with_the_marker),
        cmocka_unit_test(test_a_cut_never_splits_a_utf8_character),
        cmocka_unit_test(test_a_formatted_message_too_long_is_cut_with_the_marker),
        cmocka_unit_test(test_a_message_may_be_built_from_the_current_one),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
