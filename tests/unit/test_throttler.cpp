// Unit tests of the throttler: per key the first item of a period passes, the period is
// measured from when the key last passed (filtered items do not extend it), and keys are
// forgotten exactly one period after they passed.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include "flow/throttler.hpp"

using fluxus::Throttler;
using fluxus::word_key;

namespace {

void test_first_item_of_a_period_passes_and_the_rest_are_filtered(void **) {
    Throttler t(100);
    assert_true(t.admit(word_key(1), 1000));
    for (uint64_t now = 1000; now < 1100; now += 7) assert_false(t.admit(word_key(1), now));
    assert_false(t.admit(word_key(1), 1099));
    assert_true(t.admit(word_key(1), 1100));  // exactly one period later
    assert_false(t.admit(word_key(1), 1100));
}

void test_filtered_items_do_not_extend_the_period(void **) {
    Throttler t(100);
    assert_true(t.admit(word_key(7), 0));
    assert_false(t.admit(word_key(7), 99));
    assert_true(t.admit(word_key(7), 100));
    assert_false(t.admit(word_key(7), 150));
    assert_true(t.admit(word_key(7), 250));  // late: the next period counts from 250
    assert_false(t.admit(word_key(7), 349));
    assert_true(t.admit(word_key(7), 350));
}

void test_keys_are_throttled_independently(void **) {
    Throttler t(100);
    assert_true(t.admit(word_key(1), 0));
    assert_true(t.admit(word_key(2), 50));
    assert_false(t.admit(word_key(1), 60));
    assert_true(t.admit(word_key(1), 100));
    assert_false(t.admit(word_key(2), 149));
    assert_true(t.admit(word_key(2), 150));
}

void test_keys_are_forgotten_one_period_after_they_passed(void **) {
    Throttler t(100);
    for (uint64_t k = 0; k < 10; ++k) assert_true(t.admit(word_key(k), k * 10));  // 0..90
    assert_int_equal(t.size(), 10);
    assert_int_equal(t.forgotten(), 0);
    // At 145 keys that passed at 0..40 have had their period: 5 forgotten, and key 100 added.
    assert_true(t.admit(word_key(100), 145));
    assert_int_equal(t.forgotten(), 5);
    assert_int_equal(t.size(), 6);
    assert_true(t.admit(word_key(200), 1000));
    assert_int_equal(t.forgotten(), 11);
    assert_int_equal(t.size(), 1);
}

void test_a_key_that_passed_again_is_not_forgotten_by_its_older_pass(void **) {
    Throttler t(100);
    assert_true(t.admit(word_key(1), 0));
    assert_true(t.admit(word_key(1), 100));  // its pass at 0 expired, then it passed again
    assert_int_equal(t.forgotten(), 1);
    assert_int_equal(t.size(), 1);
    assert_false(t.admit(word_key(1), 199));
    assert_int_equal(t.forgotten(), 1);
    assert_true(t.admit(word_key(1), 200));
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_item_of_a_period_passes_and_the_rest_are_filtered),
        cmocka_unit_test(test_filtered_items_do_not_extend_the_period),
        cmocka_unit_test(test_keys_are_throttled_independently),
        cmocka_unit_test(test_keys_are_forgotten_one_period_after_they_passed),
        cmocka_unit_test(test_a_key_that_passed_again_is_not_forgotten_by_its_older_pass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
