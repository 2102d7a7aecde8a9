// Unit tests of sliding (hopping) windows per key, by count and by time: which items each window
// fires with and when, the trailing partial windows at end of input, items in gaps, when each
// item leaves and with which status (its home window's), and, against a brute-force reference,
// that every window that holds items fires exactly once with exactly its items.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <algorithm>
#include <vector>

#include "flow/sliding_windows.hpp"
#include "fluxus.h"

using fluxus::SlidingWindows;
using fluxus::word_key;

namespace {

using Items = std::vector<uint64_t>;
using Leaving = std::vector<SlidingWindows::Leaving>;

struct Fired {
    Items items;
    uint64_t start;
};

// The aggregate callback: records each window, and fails the window whose start is
// `fail_start` with `fail_rc`.
struct Recorder {
    std::vector<Fired> fired;
    uint64_t fail_start = UINT64_MAX;
    int32_t fail_rc = 0;
    int32_t operator()(const uint64_t *items, size_t n, uint64_t start) {
        fired.push_back(Fired{Items(items, items + n), start});
        return start == fail_start ? fail_rc : 0;
    }
};

Items items_of(const Leaving &l) {
    Items out;
    for (const auto &x : l) out.push_back(x.item);
    return out;
}

void test_count_windows_fire_when_their_last_item_arrives(void **) {
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 4, 2);
    Recorder fire;
    Leaving leaving;
    for (uint64_t i = 0; i < 8; ++i) {
        w.add(word_key(1), 100 + i, i * 10, fire, leaving);
        // No partial window leads: the first fires with item 3.
        assert_int_equal(fire.fired.size(), i < 3 ? 0 : (i - 1) / 2);
    }
    assert_int_equal(fire.fired.size(), 3);
    assert_true((fire.fired[0].items == Items{100, 101, 102, 103}));
    assert_int_equal(fire.fired[0].start, 0);  // when its first item came
    assert_true((fire.fired[1].items == Items{102, 103, 104, 105}));
    assert_int_equal(fire.fired[1].start, 20);
    assert_true((fire.fired[2].items == Items{104, 105, 106, 107}));
    assert_int_equal(fire.fired[2].start, 40);
    // Each item left after its last window: 0, 1 after the first, 2, 3 after the second...
    assert_true((items_of(leaving) == Items{100, 101, 102, 103, 104, 105}));
    assert_int_equal(w.next_deadline(), UINT64_MAX);  // count windows need no timer
}

void test_end_of_input_fires_the_trailing_partial_count_windows(void **) {
    // The example of fluxus_pipeline_add_sliding_window(): size 4, step 2, items 0..4.
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 4, 2);
    Recorder fire;
    Leaving leaving;
    for (uint64_t i = 0; i < 5; ++i) w.add(word_key(1), i, i, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    w.close_all(fire, leaving);
    assert_int_equal(fire.fired.size(), 3);
    assert_true((fire.fired[0].items == Items{0, 1, 2, 3}));
    assert_true((fire.fired[1].items == Items{2, 3, 4}));
    assert_int_equal(fire.fired[1].start, 2);
    assert_true((fire.fired[2].items == Items{4}));
    assert_int_equal(fire.fired[2].start, 4);
    assert_true((items_of(leaving) == Items{0, 1, 2, 3, 4}));
    for (const auto &l : leaving) assert_int_equal(l.status, 0);
}

void test_tumbling_count_windows_hold_each_item_once(void **) {
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 3, 3);
    Recorder fire;
    Leaving leaving;
    for (uint64_t i = 0; i < 7; ++i) w.add(word_key(1), i, i, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
    assert_true((fire.fired[1].items == Items{3, 4, 5}));
    assert_true((items_of(leaving) == Items{0, 1, 2, 3, 4, 5}));
    w.close_all(fire, leaving);
    assert_int_equal(fire.fired.size(), 3);
    assert_true(fire.fired[2].items == Items{6});
    assert_int_equal(leaving.size(), 7);
}

void test_count_items_in_a_gap_leave_at_once_in_no_window(void **) {
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 2, 3);  // windows [0,2), [3,5), [6,8): 2, 5 in gaps
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 0, 0, fire, leaving);
    w.add(word_key(1), 1, 0, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    assert_true((items_of(leaving) == Items{0, 1}));
    w.add(word_key(1), 2, 0, fire, leaving);
    assert_true((items_of(leaving) == Items{0, 1, 2}));  // at once
    assert_int_equal(fire.fired.size(), 1);
    w.add(word_key(1), 3, 0, fire, leaving);
    w.add(word_key(1), 4, 0, fire, leaving);
    w.add(word_key(1), 5, 0, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
    assert_true((fire.fired[1].items == Items{3, 4}));
    assert_true((items_of(leaving) == Items{0, 1, 2, 3, 4, 5}));
    w.close_all(fire, leaving);
    assert_int_equal(fire.fired.size(), 2);  // no window has begun since
}

void test_count_keys_are_windowed_independently(void **) {
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 2, 1);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 10, 0, fire, leaving);
    w.add(word_key(2), 20, 0, fire, leaving);
    w.add(word_key(2), 21, 0, fire, leaving);
    w.add(word_key(1), 11, 0, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
    assert_true((fire.fired[0].items == Items{20, 21}));
    assert_true((fire.fired[1].items == Items{10, 11}));
}

void test_count_items_fail_with_their_home_windows_status_only(void **) {
    SlidingWindows w(FLUXUS_WINDOW_COUNT, 4, 2);
    Recorder fire;
    fire.fail_start = 20;  // the second window, [2..5], whose first item came at 20
    fire.fail_rc = -5;
    Leaving leaving;
    for (uint64_t i = 0; i < 8; ++i) w.add(word_key(1), i, i * 10, fire, leaving);
    w.close_all(fire, leaving);
    assert_int_equal(leaving.size(), 8);
    // Items 2, 3 are first in window [0..3], which succeeded; 4, 5 are first in [2..5].
    const int32_t want[8] = {0, 0, 0, 0, -5, -5, 0, 0};
    for (size_t i = 0; i < 8; ++i) {
        assert_int_equal(leaving[i].item, i);
        assert_int_equal(leaving[i].status, want[i]);
    }
}

void test_time_windows_fire_at_their_end_with_the_items_that_arrived_in_them(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 100, 0, fire, leaving);
    w.add(word_key(1), 103, 3, fire, leaving);
    w.add(word_key(1), 107, 7, fire, leaving);
    assert_int_equal(w.next_deadline(), 10);
    w.close_due(9, fire, leaving);
    assert_int_equal(fire.fired.size(), 0);
    w.close_due(10, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    assert_true((fire.fired[0].items == Items{100, 103, 107}));
    assert_int_equal(fire.fired[0].start, 0);
    assert_true((items_of(leaving) == Items{100, 103}));  // 7 is also in [5, 15)
    assert_int_equal(w.next_deadline(), 15);
    w.add(word_key(1), 112, 12, fire, leaving);
    w.close_due(15, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
    assert_true((fire.fired[1].items == Items{107, 112}));
    assert_int_equal(fire.fired[1].start, 5);  // the window's start
    assert_true((items_of(leaving) == Items{100, 103, 107}));
    w.close_due(20, fire, leaving);
    assert_int_equal(fire.fired.size(), 3);
    assert_true(fire.fired[2].items == Items{112});
    assert_int_equal(fire.fired[2].start, 10);
    assert_int_equal(leaving.size(), 4);
    assert_int_equal(w.next_deadline(), UINT64_MAX);
}

void test_time_window_that_ended_before_a_late_timer_fires_on_the_next_add(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 100, 0, fire, leaving);
    w.add(word_key(1), 107, 7, fire, leaving);
    w.add(word_key(1), 112, 12, fire, leaving);  // [0, 10) ended at 10: fired first
    assert_int_equal(fire.fired.size(), 1);
    assert_true((fire.fired[0].items == Items{100, 107}));
    w.close_due(12, fire, leaving);  // the late timer finds nothing more to fire
    assert_int_equal(fire.fired.size(), 1);
    w.close_due(15, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
    assert_true((fire.fired[1].items == Items{107, 112}));
}

void test_empty_time_windows_do_not_fire(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 0, 0, fire, leaving);  // only in [0, 10)
    w.close_due(10, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    assert_int_equal(leaving.size(), 1);
    assert_int_equal(w.next_deadline(), UINT64_MAX);  // [5, 15) holds nothing: no timer
    w.close_due(15, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    w.add(word_key(1), 100, 100, fire, leaving);  // in [95, 105) and [100, 110)
    assert_int_equal(w.next_deadline(), 105);
    w.close_due(1000, fire, leaving);
    assert_int_equal(fire.fired.size(), 3);  // none of [5, 15) .. [90, 100)
    assert_int_equal(fire.fired[1].start, 95);
    assert_int_equal(fire.fired[2].start, 100);
}

void test_time_items_in_a_gap_leave_at_once_in_no_window(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 5, 10);  // [0,5), [10,15), ...
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 7, 7, fire, leaving);
    assert_int_equal(leaving.size(), 1);
    assert_int_equal(leaving[0].status, 0);
    assert_int_equal(w.next_deadline(), UINT64_MAX);
    w.add(word_key(1), 10, 10, fire, leaving);  // the boundary belongs to [10, 15)
    w.add(word_key(1), 14, 14, fire, leaving);
    w.add(word_key(1), 15, 15, fire, leaving);  // gap again: fires [10, 15) on the way
    assert_int_equal(fire.fired.size(), 1);
    assert_true((fire.fired[0].items == Items{10, 14}));
    assert_true((items_of(leaving) == Items{7, 10, 14, 15}));
}

void test_next_deadline_ignores_the_timer_of_a_keys_earlier_life(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 5, 10);  // [0,5), [10,15), ...
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 0, 0, fire, leaving);  // timer for 5
    w.add(word_key(1), 7, 7, fire, leaving);  // fires [0, 5) on the way; 7 is in a gap
    assert_int_equal(fire.fired.size(), 1);
    assert_int_equal(leaving.size(), 2);  // the key holds nothing now
    w.add(word_key(1), 12, 12, fire, leaving);
    assert_int_equal(w.next_deadline(), 15);  // not the passed 5 of its first window
    w.close_due(14, fire, leaving);
    assert_int_equal(fire.fired.size(), 1);
    w.close_due(15, fire, leaving);
    assert_int_equal(fire.fired.size(), 2);
}

void test_time_items_fail_with_their_home_windows_status_only(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    fire.fail_start = 5;
    fire.fail_rc = -3;
    Leaving leaving;
    w.add(word_key(1), 0, 0, fire, leaving);
    w.add(word_key(1), 7, 7, fire, leaving);
    w.add(word_key(1), 12, 12, fire, leaving);
    w.close_due(100, fire, leaving);
    assert_int_equal(fire.fired.size(), 3);
    assert_int_equal(leaving.size(), 3);
    // 7's home is [0, 10) (succeeded); 12's is [5, 15) (failed).
    assert_int_equal(leaving[0].item, 0);
    assert_int_equal(leaving[0].status, 0);
    assert_int_equal(leaving[1].item, 7);
    assert_int_equal(leaving[1].status, 0);
    assert_int_equal(leaving[2].item, 12);
    assert_int_equal(leaving[2].status, -3);
}

void test_end_of_input_fires_every_time_window_still_holding_items(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 0, 0, fire, leaving);
    w.add(word_key(1), 7, 7, fire, leaving);
    w.add(word_key(2), 30, 30, fire, leaving);
    w.close_all(fire, leaving);
    assert_int_equal(leaving.size(), 3);
    Items starts;
    for (const Fired &f : fire.fired) starts.push_back(f.start);
    std::sort(starts.begin(), starts.end());
    assert_true((starts == Items{0, 5, 25, 30}));
    assert_int_equal(w.next_deadline(), UINT64_MAX);
}

void test_cancel_hands_back_held_items_unfired(void **) {
    SlidingWindows w(FLUXUS_WINDOW_TIME, 10, 5);
    Recorder fire;
    Leaving leaving;
    w.add(word_key(1), 1, 1, fire, leaving);
    w.add(word_key(2), 2, 2, fire, leaving);
    Items dropped;
    w.drop_all(dropped);
    std::sort(dropped.begin(), dropped.end());
    assert_true((dropped == Items{1, 2}));
    assert_int_equal(w.next_deadline(), UINT64_MAX);
    w.close_all(fire, leaving);
    assert_int_equal(fire.fired.size(), 0);
}

// Reference: window k is [k * step, k * step + size) over `pos` (index or time); each window
// holding at least one item fires once, with its items in order.
std::vector<Items> reference(const Items &pos, uint64_t size, uint64_t step) {
    std::vector<Items> out;
    if (pos.empty()) return out;
    for (uint64_t k = 0; k * step <= pos.back(); ++k) {
        Items in;
        for (size_t i = 0; i < pos.size(); ++i)
            if (pos[i] >= k * step && pos[i] < k * step + size) in.push_back(i);
        if (!in.empty()) out.push_back(in);
    }
    return out;
}

uint64_t next_random(uint64_t *s) {
    *s += 0x9E3779B97F4A7C15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void check_against_reference(int32_t kind, uint64_t size, uint64_t step, bool timers,
                             uint64_t seed) {
    SlidingWindows w(kind, size, step);
    Recorder fire;
    Leaving leaving;
    Items pos;
    uint64_t now = next_random(&seed) % 20;
    const size_t n = 200;
    for (uint64_t i = 0; i < n; ++i) {
        now += next_random(&seed) % 8;
        if (timers && next_random(&seed) % 2) w.close_due(now, fire, leaving);
        w.add(word_key(42), i, now, fire, leaving);
        pos.push_back(kind == FLUXUS_WINDOW_TIME ? now : i);
    }
    w.close_all(fire, leaving);
    std::vector<Items> want = reference(pos, size, step);
    assert_int_equal(fire.fired.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) assert_true(fire.fired[k].items == want[k]);
    // Every item left exactly once, in arrival order.
    assert_int_equal(leaving.size(), n);
    for (uint64_t i = 0; i < n; ++i) assert_int_equal(leaving[i].item, i);
}

void test_every_window_holding_items_fires_once_with_exactly_its_items(void **) {
    const uint64_t shapes[][2] = {{4, 2}, {3, 3}, {2, 3}, {10, 5}, {10, 3}, {5, 10}, {7, 7},
                                  {1, 1}, {12, 1}, {1, 4}};
    for (const auto &sh : shapes)
        for (uint64_t seed = 1; seed <= 5; ++seed) {
            check_against_reference(FLUXUS_WINDOW_COUNT, sh[0], sh[1], false, seed);
            check_against_reference(FLUXUS_WINDOW_TIME, sh[0], sh[1], false, seed);
            check_against_reference(FLUXUS_WINDOW_TIME, sh[0], sh[1], true, seed);
        }
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_windows_fire_when_their_last_item_arrives),
        cmocka_unit_test(test_end_of_input_fires_the_trailing_partial_count_windows),
        cmocka_unit_test(test_tumbling_count_windows_hold_each_item_once),
        cmocka_unit_test(test_count_items_in_a_gap_leave_at_once_in_no_window),
        cmocka_unit_test(test_count_keys_are_windowed_independently),
        cmocka_unit_test(test_count_items_fail_with_their_home_windows_status_only),
        cmocka_unit_test(test_time_windows_fire_at_their_end_with_the_items_that_arrived_in_them),
        cmocka_unit_test(test_time_window_that_ended_before_a_late_timer_fires_on_the_next_add),
        cmocka_unit_test(test_empty_time_windows_do_not_fire),
        cmocka_unit_test(test_time_items_in_a_gap_leave_at_once_in_no_window),
        cmocka_unit_test(test_next_deadline_ignores_the_timer_of_a_keys_earlier_life),
        cmocka_unit_test(test_time_items_fail_with_their_home_windows_status_only),
        cmocka_unit_test(test_end_of_input_fires_every_time_window_still_holding_items),
        cmocka_unit_test(test_cancel_hands_back_held_items_unfired),
        cmocka_unit_test(test_every_window_holding_items_fires_once_with_exactly_its_items),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
