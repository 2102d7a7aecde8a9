// Unit tests of KeyWindow (the last N distinct keys, exactly) and of the word keys that the
// per-key flow classes share (keyed_state.hpp).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <unordered_set>

#include "flow/key_window.hpp"

using fluxus::Key128;
using fluxus::KeyWindow;
using fluxus::word_key;

namespace {

void test_repeat_within_the_last_n_distinct_keys_is_refused(void **) {
    KeyWindow w(3);
    assert_true(w.admit(word_key(1)));
    assert_true(w.admit(word_key(2)));
    assert_false(w.admit(word_key(1)));
    assert_true(w.admit(word_key(3)));
    assert_false(w.admit(word_key(2)));
    assert_int_equal(w.size(), 3);
    assert_int_equal(w.forgotten(), 0);
}

void test_the_n_plus_first_distinct_key_forgets_the_oldest(void **) {
    KeyWindow w(3);
    for (uint64_t k = 1; k <= 3; ++k) assert_true(w.admit(word_key(k)));
    assert_false(w.admit(word_key(1)));  // a repeat does not make key 1 younger
    assert_true(w.admit(word_key(4)));   // forgets key 1, the oldest first seen
    assert_int_equal(w.forgotten(), 1);
    assert_int_equal(w.size(), 3);
    assert_false(w.admit(word_key(2)));
    assert_true(w.admit(word_key(1)));  // passes again, and forgets key 2
    assert_true(w.admit(word_key(2)));
    assert_int_equal(w.forgotten(), 3);
}

void test_window_of_one_refuses_only_immediate_repeats(void **) {
    KeyWindow w(1);
    assert_true(w.admit(word_key(5)));
    assert_false(w.admit(word_key(5)));
    assert_true(w.admit(word_key(6)));
    assert_true(w.admit(word_key(5)));
    assert_int_equal(w.size(), 1);
}

void test_large_window_remembers_exactly_n_keys(void **) {
    const uint64_t n = 1000;
    KeyWindow w(n);
    for (uint64_t k = 0; k < 5 * n; ++k) assert_true(w.admit(word_key(k)));
    assert_int_equal(w.size(), n);
    assert_int_equal(w.forgotten(), 4 * n);
    for (uint64_t k = 4 * n; k < 5 * n; ++k) assert_false(w.admit(word_key(k)));
    assert_true(w.admit(word_key(4 * n - 1)));  // the newest forgotten key passes
}

void test_word_keys_never_collide_and_carry_the_word(void **) {
    std::unordered_set<Key128, fluxus::Key128Hash> seen;
    for (uint64_t x = 0; x < 100000; ++x) {
        Key128 k = word_key(x);
        assert_int_equal(k.hi, x);
        assert_int_equal(k.lo, fluxus::hash_word(x));
        assert_true(seen.insert(k).second);
    }
    assert_true(word_key(UINT64_MAX) == word_key(UINT64_MAX));
    assert_false(word_key(0) == word_key(1));
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repeat_within_the_last_n_distinct_keys_is_refused),
        cmocka_unit_test(test_the_n_plus_first_distinct_key_forgets_the_oldest),
        cmocka_unit_test(test_window_of_one_refuses_only_immediate_repeats),
        cmocka_unit_test(test_large_window_remembers_exactly_n_keys),
        cmocka_unit_test(test_word_keys_never_collide_and_carry_the_word),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
