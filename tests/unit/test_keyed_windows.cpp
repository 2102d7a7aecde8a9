// Unit tests of tumbling and session windows per key: count windows close on their last item,
// time windows cover aligned periods [k * size, (k + 1) * size) and close at exactly their end,
// session windows close `size` ns after their key's last item; close_all keeps opening order.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <vector>

#include "flow/keyed_windows.hpp"
#include "fluxus.h"

using fluxus::KeyedWindows;
using fluxus::word_key;

namespace {

using Items = std::vector<uint64_t>;
using Closed = std::vector<KeyedWindows::Closed>;

void test_count_window_closes_on_its_last_item(void **) {
    KeyedWindows w(FLUXUS_WINDOW_COUNT, 3);
    Closed out;
    w.add(word_key(1), 10, 100, out);
    w.add(word_key(2), 20, 110, out);
    w.add(word_key(1), 11, 120, out);
    assert_true(out.empty());
    assert_int_equal(w.next_deadline(), UINT64_MAX);  // count windows have no timer
    w.add(word_key(1), 12, 130, out);
    assert_int_equal(out.size(), 1);
    assert_true((out[0].items == Items{10, 11, 12}));
    assert_int_equal(out[0].start_ns, 100);  // when its first item came
    assert_int_equal(w.open(), 1);
    w.add(word_key(1), 13, 140, out);  // the next window of key 1 starts here
    assert_int_equal(w.open(), 2);
}

void test_count_window_of_one_closes_every_item(void **) {
    KeyedWindows w(FLUXUS_WINDOW_COUNT, 1);
    Closed out;
    for (uint64_t i = 0; i < 5; ++i) w.add(word_key(1), i, i, out);
    assert_int_equal(out.size(), 5);
    assert_int_equal(w.open(), 0);
}

void test_time_window_covers_its_aligned_period_and_closes_at_its_end(void **) {
    KeyedWindows w(FLUXUS_WINDOW_TIME, 1000);
    Closed out;
    w.add(word_key(1), 10, 1234, out);
    w.add(word_key(1), 11, 1999, out);
    assert_int_equal(w.next_deadline(), 2000);
    w.close_due(1999, out);
    assert_true(out.empty());
    w.close_due(2000, out);
    assert_int_equal(out.size(), 1);
    assert_true((out[0].items == Items{10, 11}));
    assert_int_equal(out[0].start_ns, 1000);  // the period's start, not the first item's
    assert_int_equal(w.next_deadline(), UINT64_MAX);
}

void test_item_at_a_period_boundary_belongs_to_the_next_period(void **) {
    KeyedWindows w(FLUXUS_WINDOW_TIME, 1000);
    Closed out;
    w.add(word_key(1), 10, 1999, out);
    w.add(word_key(1), 11, 2000, out);  // its timer has not run yet: add closes [1000, 2000)
    assert_int_equal(out.size(), 1);
    assert_true(out[0].items == Items{10});
    assert_int_equal(out[0].start_ns, 1000);
    assert_int_equal(w.next_deadline(), 3000);
    w.close_due(2999, out);
    assert_int_equal(out.size(), 1);
    w.close_due(3000, out);
    assert_int_equal(out.size(), 2);
    assert_true(out[1].items == Items{11});
    assert_int_equal(out[1].start_ns, 2000);
}

void test_a_window_closed_by_add_does_not_close_the_next_one_early(void **) {
    KeyedWindows w(FLUXUS_WINDOW_TIME, 10);
    Closed out;
    w.add(word_key(1), 1, 0, out);   // [0, 10)
    w.add(word_key(1), 2, 12, out);  // closes [0, 10) itself, opens [10, 20)
    assert_int_equal(out.size(), 1);
    w.close_due(12, out);  // the timer for 10 runs late: [10, 20) has not ended
    assert_int_equal(out.size(), 1);
    assert_int_equal(w.open(), 1);
    assert_int_equal(w.next_deadline(), 20);
    w.add(word_key(1), 3, 15, out);
    w.close_due(20, out);
    assert_int_equal(out.size(), 2);
    assert_true((out[1].items == Items{2, 3}));
}

void test_session_window_closes_size_after_the_keys_last_item(void **) {
    KeyedWindows w(FLUXUS_WINDOW_SESSION, 100);
    Closed out;
    w.add(word_key(1), 10, 1000, out);
    assert_int_equal(w.next_deadline(), 1100);
    w.add(word_key(1), 11, 1099, out);  // within the gap: the session goes on
    assert_int_equal(w.next_deadline(), 1199);
    w.close_due(1198, out);
    assert_true(out.empty());
    w.close_due(1199, out);
    assert_int_equal(out.size(), 1);
    assert_true((out[0].items == Items{10, 11}));
    assert_int_equal(out[0].start_ns, 1000);
}

void test_item_after_the_gap_starts_a_new_session(void **) {
    KeyedWindows w(FLUXUS_WINDOW_SESSION, 100);
    Closed out;
    w.add(word_key(1), 10, 1000, out);
    // `size` passed without an item of the key, but the timer has not run yet: the session
    // ended at 1100, and this item starts the next one.
    w.add(word_key(1), 11, 1100, out);
    assert_int_equal(out.size(), 1);
    assert_true(out[0].items == Items{10});
    assert_int_equal(w.next_deadline(), 1200);
    w.close_due(1200, out);
    assert_int_equal(out.size(), 2);
    assert_true(out[1].items == Items{11});
    assert_int_equal(out[1].start_ns, 1100);
}

void test_due_windows_close_oldest_deadline_first(void **) {
    KeyedWindows w(FLUXUS_WINDOW_SESSION, 100);
    Closed out;
    w.add(word_key(1), 10, 0, out);
    w.add(word_key(2), 20, 10, out);
    w.add(word_key(3), 30, 20, out);
    w.add(word_key(1), 11, 30, out);  // key 1's deadline moves to 130
    w.close_due(1000, out);
    assert_int_equal(out.size(), 3);
    assert_true(out[0].items == Items{20});
    assert_true(out[1].items == Items{30});
    assert_true((out[2].items == Items{10, 11}));
    assert_int_equal(w.open(), 0);
    assert_int_equal(w.next_deadline(), UINT64_MAX);
}

void test_close_all_hands_back_partial_windows_in_opening_order(void **) {
    KeyedWindows w(FLUXUS_WINDOW_COUNT, 10);
    Closed out;
    for (uint64_t k = 20; k > 0; --k) w.add(word_key(k), k, 0, out);
    w.add(word_key(7), 70, 0, out);
    w.close_all(out);
    assert_int_equal(out.size(), 20);
    for (uint64_t i = 0; i < 20; ++i) assert_int_equal(out[i].items[0], 20 - i);
    assert_true((out[13].items == Items{7, 70}));
    assert_int_equal(w.open(), 0);
}

void test_close_all_also_ends_time_windows_and_their_timers(void **) {
    KeyedWindows w(FLUXUS_WINDOW_TIME, 100);
    Closed out;
    w.add(word_key(1), 10, 50, out);
    w.add(word_key(2), 20, 150, out);
    w.close_all(out);
    assert_int_equal(out.size(), 2);
    assert_int_equal(out[0].start_ns, 0);
    assert_int_equal(out[1].start_ns, 100);
    assert_int_equal(w.next_deadline(), UINT64_MAX);
    w.close_due(UINT64_MAX, out);
    assert_int_equal(out.size(), 2);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_window_closes_on_its_last_item),
        cmocka_unit_test(test_count_window_of_one_closes_every_item),
        cmocka_unit_test(test_time_window_covers_its_aligned_period_and_closes_at_its_end),
        cmocka_unit_test(test_item_at_a_period_boundary_belongs_to_the_next_period),
        cmocka_unit_test(test_a_window_closed_by_add_does_not_close_the_next_one_early),
        cmocka_unit_test(test_session_window_closes_size_after_the_keys_last_item),
        cmocka_unit_test(test_item_after_the_gap_starts_a_new_session),
        cmocka_unit_test(test_due_windows_close_oldest_deadline_first),
        cmocka_unit_test(test_close_all_hands_back_partial_windows_in_opening_order),
        cmocka_unit_test(test_close_all_also_ends_time_windows_and_their_timers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
