// Unit tests of the circuit breaker's state machine at explicit times: both triggers, the reset
// timeout to the nanosecond, half-open trial slots and thresholds, outcomes of an earlier state
// ignored, the state callback's order (also when it re-enters the breaker or replaces itself),
// and which waiting tasks a change wakes.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <stdexcept>
#include <utility>
#include <vector>

#include "fake_task.hpp"
#include "flow/circuit_breaker.hpp"

using fluxus::CircuitBreaker;
using fluxus_test::BareRuntime;
using fluxus_test::CountingTask;

namespace {

constexpr int32_t CLOSED = FLUXUS_BREAKER_CLOSED;
constexpr int32_t OPEN = FLUXUS_BREAKER_OPEN;
constexpr int32_t HALF = FLUXUS_BREAKER_HALF_OPEN;
constexpr uint64_t T0 = 5000000000ull;
constexpr uint64_t kSec = 1000000000ull;

// Asks and records one call at `now`; returns whether it was allowed.
bool call(CircuitBreaker &b, uint64_t now, bool success) {
    uint64_t epoch = 0, retry = 0;
    if (!b.allow(now, &epoch, &retry)) return false;
    b.record(epoch, success, now);
    return true;
}

struct Recorder {
    std::vector<std::pair<int32_t, int32_t>> seen;
    int freed = 0;
};

void record_change(void *user, int32_t from, int32_t to) {
    static_cast<Recorder *>(user)->seen.emplace_back(from, to);
}

void count_free(void *user) { ++static_cast<Recorder *>(user)->freed; }

void test_new_breaker_opens_after_five_consecutive_failures(void **) {
    CircuitBreaker b(nullptr);
    assert_int_equal(b.state(T0), CLOSED);
    for (int i = 0; i < 4; ++i) assert_true(call(b, T0, false));
    assert_int_equal(b.state(T0), CLOSED);
    assert_true(call(b, T0, false));
    assert_int_equal(b.state(T0), OPEN);
}

void test_a_success_resets_the_consecutive_count(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(3);
    for (int round = 0; round < 10; ++round) {
        assert_true(call(b, T0, false));
        assert_true(call(b, T0, false));
        assert_true(call(b, T0, true));
    }
    assert_int_equal(b.state(T0), CLOSED);
}

void test_consecutive_zero_turns_that_trigger_off(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(0);
    for (int i = 0; i < 1000; ++i) assert_true(call(b, T0, false));
    assert_int_equal(b.state(T0), CLOSED);
}

void test_ratio_trigger_waits_for_min_calls_then_opens_at_the_ratio(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(0);
    b.set_ratio(0.5, 4, 4);
    assert_true(call(b, T0, false));
    assert_true(call(b, T0, false));
    assert_true(call(b, T0, false));  // 3 of 3 failed, but fewer than min_calls
    assert_int_equal(b.state(T0), CLOSED);
    assert_true(call(b, T0, true));  // 3 of 4: opens
    assert_int_equal(b.state(T0), OPEN);
}

void test_ratio_window_forgets_the_oldest_outcome(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(0);
    b.set_ratio(0.5, 4, 1);
    assert_true(call(b, T0, false));  // 1 of 1 (min_calls 1): at least half, opens at once
    assert_int_equal(b.state(T0), OPEN);
    CircuitBreaker c(nullptr);
    c.set_consecutive(0);
    c.set_ratio(0.5, 4, 4);
    const bool outcomes[] = {true, true, true, false, true, false, true};
    // Windows: SSSF (1/4), SSFS (1/4), SFSF (2/4: opens).
    for (size_t i = 0; i < 6; ++i) {
        assert_true(call(c, T0, outcomes[i]));
        assert_int_equal(c.state(T0), i == 5 ? OPEN : CLOSED);
    }
}

void test_ratio_just_below_the_threshold_stays_closed(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(0);
    b.set_ratio(0.75, 4, 4);
    for (int round = 0; round < 5; ++round) {
        assert_true(call(b, T0, false));
        assert_true(call(b, T0, false));
        assert_true(call(b, T0, true));
        assert_true(call(b, T0, true));
    }
    assert_int_equal(b.state(T0), CLOSED);  // never more than 2 of 4
}

void test_open_breaker_refuses_until_the_reset_timeout_to_the_nanosecond(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(kSec);
    assert_true(call(b, T0, false));
    uint64_t epoch = 0, retry = 0;
    assert_false(b.allow(T0 + kSec - 1, &epoch, &retry));
    assert_int_equal(retry, T0 + kSec);
    assert_int_equal(b.rejected.load(), 1);
    assert_int_equal(b.open_until(T0 + kSec - 1, nullptr, nullptr), T0 + kSec);
    assert_int_equal(b.open_until(T0 + kSec, nullptr, nullptr), 0);
    assert_int_equal(b.state(T0 + kSec - 1), OPEN);
    assert_true(b.allow(T0 + kSec, &epoch, &retry));
    assert_int_equal(b.state(T0 + kSec), HALF);
}

void test_half_open_limits_trials_in_progress(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    b.set_half_open(2, 5);
    assert_true(call(b, T0, false));
    uint64_t e1 = 0, e2 = 0, e3 = 0, retry = 0;
    assert_true(b.allow(T0 + 10, &e1, &retry));
    assert_true(b.allow(T0 + 10, &e2, &retry));
    assert_false(b.allow(T0 + 10, &e3, &retry));
    assert_int_equal(retry, UINT64_MAX);  // only a trial finishing helps
    b.record(e1, true, T0 + 11);          // done: its slot is free again
    assert_true(b.allow(T0 + 11, &e3, &retry));
    b.abandon(e2);  // a cancelled trial frees its slot and counts neither way
    assert_true(b.allow(T0 + 12, &e2, &retry));
    assert_false(b.allow(T0 + 12, &e1, &retry));
    assert_int_equal(b.state(T0 + 12), HALF);
}

void test_half_open_closes_after_the_success_threshold(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    b.set_half_open(1, 3);
    assert_true(call(b, T0, false));
    assert_true(call(b, T0 + 10, true));
    assert_true(call(b, T0 + 10, true));
    assert_int_equal(b.state(T0 + 10), HALF);
    assert_true(call(b, T0 + 10, true));
    assert_int_equal(b.state(T0 + 10), CLOSED);
    // Closed again with fresh counts: one failure (limit 1) opens it.
    assert_true(call(b, T0 + 20, false));
    assert_int_equal(b.state(T0 + 20), OPEN);
}

void test_one_failed_trial_reopens_for_a_full_reset_timeout(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(100);
    b.set_half_open(1, 2);
    assert_true(call(b, T0, false));
    assert_true(call(b, T0 + 100, true));
    assert_true(call(b, T0 + 150, false));  // reopens at T0 + 150
    assert_int_equal(b.state(T0 + 249), OPEN);
    uint64_t epoch = 0, retry = 0;
    assert_false(b.allow(T0 + 249, &epoch, &retry));
    assert_int_equal(retry, T0 + 250);
    assert_int_equal(b.state(T0 + 250), HALF);
}

void test_outcomes_allowed_in_an_earlier_state_are_ignored(void **) {
    CircuitBreaker b(nullptr);
    b.set_consecutive(2);
    b.set_reset_ns(10);
    uint64_t slow = 0, retry = 0;
    assert_true(b.allow(T0, &slow, &retry));  // a slow call starts while closed
    assert_true(call(b, T0, false));
    assert_true(call(b, T0, false));
    assert_int_equal(b.state(T0), OPEN);
    uint64_t trial = 0;
    assert_true(b.allow(T0 + 10, &trial, &retry));
    b.record(slow, true, T0 + 11);  // from the closed epoch: does not close the breaker
    assert_int_equal(b.state(T0 + 11), HALF);
    b.record(slow, false, T0 + 11);  // nor reopen it
    b.abandon(slow);                 // nor free a trial slot
    assert_int_equal(b.state(T0 + 11), HALF);
    uint64_t other = 0;
    assert_false(b.allow(T0 + 11, &other, &retry));
    b.record(trial, true, T0 + 12);
    assert_int_equal(b.state(T0 + 12), CLOSED);
}

void test_state_callback_sees_every_change_in_order(void **) {
    CircuitBreaker *b = new CircuitBreaker(nullptr);
    Recorder rec;
    b->set_callback(record_change, &rec, count_free);
    b->set_consecutive(1);
    b->set_reset_ns(10);
    assert_true(call(*b, T0, false));
    assert_true(call(*b, T0 + 10, false));  // open -> half-open -> open in one allow/record
    assert_true(call(*b, T0 + 20, true));
    const std::vector<std::pair<int32_t, int32_t>> want = {
        {CLOSED, OPEN}, {OPEN, HALF}, {HALF, OPEN}, {OPEN, HALF}, {HALF, CLOSED}};
    assert_true(rec.seen == want);
    assert_int_equal(rec.freed, 0);
    b->release();
    assert_int_equal(rec.freed, 1);  // user_free exactly once, when the breaker goes
}

void test_replacing_the_callback_frees_the_old_user_at_once(void **) {
    CircuitBreaker b(nullptr);
    Recorder first, second;
    b.set_callback(record_change, &first, count_free);
    b.set_callback(record_change, &second, count_free);
    assert_int_equal(first.freed, 1);
    b.set_consecutive(1);
    assert_true(call(b, T0, false));
    assert_int_equal(first.seen.size(), 0);
    assert_int_equal(second.seen.size(), 1);
    b.set_callback(nullptr, nullptr, nullptr);  // removes it; the old user goes
    assert_int_equal(second.freed, 1);
    assert_int_equal(b.state(T0 + kSec), HALF);  // no callback: nothing to report to
    assert_int_equal(second.seen.size(), 1);
}

struct Reentrant {
    CircuitBreaker *b;
    std::vector<std::pair<int32_t, int32_t>> seen;
    int depth = 0, max_depth = 0;
};

void reenter(void *user, int32_t from, int32_t to) {
    Reentrant *r = static_cast<Reentrant *>(user);
    ++r->depth;
    r->max_depth = std::max(r->max_depth, r->depth);
    r->seen.emplace_back(from, to);
    // Entering half-open: run a failing trial from inside the callback. Its change (half-open
    // -> open) must be reported after this call returns, not from inside it.
    if (to == HALF) assert_true(call(*r->b, T0 + 10, false));
    --r->depth;
}

void test_changes_made_inside_the_callback_are_reported_after_it_returns(void **) {
    CircuitBreaker b(nullptr);
    Reentrant r{&b, {}, 0, 0};
    b.set_callback(reenter, &r, nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    assert_true(call(b, T0, false));
    // state() answers what it saw before reporting; the callback's trial then reopened it.
    assert_int_equal(b.state(T0 + 10), HALF);
    assert_int_equal(b.state(T0 + 10), OPEN);
    const std::vector<std::pair<int32_t, int32_t>> want = {
        {CLOSED, OPEN}, {OPEN, HALF}, {HALF, OPEN}};
    assert_true(r.seen == want);
    assert_int_equal(r.max_depth, 1);  // never nested
}

struct SelfReplacing {
    CircuitBreaker *b;
    Recorder *next;
    int calls = 0, freed = 0, freed_during_call = 0;
    bool in_call = false;
};

void self_free(void *user) {
    SelfReplacing *s = static_cast<SelfReplacing *>(user);
    ++s->freed;
    if (s->in_call) ++s->freed_during_call;
}

void replace_self(void *user, int32_t, int32_t) {
    SelfReplacing *s = static_cast<SelfReplacing *>(user);
    s->in_call = true;
    ++s->calls;
    s->b->set_callback(record_change, s->next, count_free);
    s->in_call = false;
}

void test_a_callback_that_replaces_itself_keeps_its_user_until_it_returns(void **) {
    Recorder next;  // before the breaker, whose destructor releases it
    CircuitBreaker b(nullptr);
    SelfReplacing s{&b, &next};
    b.set_callback(replace_self, &s, self_free);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    assert_true(call(b, T0, false));
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.freed, 1);
    assert_int_equal(s.freed_during_call, 0);
    assert_int_equal(b.state(T0 + 10), HALF);  // reported to the new callback
    assert_int_equal(next.seen.size(), 1);
    assert_int_equal(s.calls, 1);
}

void throwing_callback(void *user, int32_t, int32_t) {
    ++*static_cast<int *>(user);
    throw std::runtime_error("state callback");
}

void test_a_throwing_callback_loses_only_that_notification(void **) {
    CircuitBreaker b(nullptr);
    int calls = 0;
    b.set_callback(throwing_callback, &calls, nullptr);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    assert_true(call(b, T0, false));
    assert_true(call(b, T0 + 10, true));
    assert_int_equal(calls, 3);  // closed->open, open->half-open, half-open->closed
    assert_int_equal(b.state(T0 + 10), CLOSED);
}

void test_refused_tasks_are_woken_by_the_next_change(void **) {
    BareRuntime br;
    CircuitBreaker b(nullptr);
    CountingTask a(br.rt, &br.owner), other(br.rt, &br.other_owner);
    b.set_consecutive(1);
    b.set_reset_ns(10);
    b.set_half_open(1, 1);
    assert_true(call(b, T0, false));
    uint64_t epoch = 0, retry = 0;
    assert_false(b.allow(T0 + 1, &epoch, &retry, &a, &br.owner));
    assert_false(b.allow(T0 + 2, &epoch, &retry, &a, &br.owner));  // one entry per task
    assert_int_equal(b.open_until(T0 + 3, &other, &br.other_owner), T0 + 10);
    assert_int_equal(br.run_queued(), 0);
    uint64_t trial = 0;
    assert_true(b.allow(T0 + 10, &trial, &retry));  // open -> half-open wakes both
    assert_int_equal(br.run_queued(), 2);
    assert_int_equal(a.runs, 1);
    assert_int_equal(other.runs, 1);
    // Half-open and full: a refused task is woken when the trial slot frees up.
    assert_false(b.allow(T0 + 10, &epoch, &retry, &a, &br.owner));
    b.abandon(trial);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 2);
    // remove_owner() is a barrier: that owner's tasks are not touched again.
    assert_true(b.allow(T0 + 10, &trial, &retry));
    assert_false(b.allow(T0 + 10, &epoch, &retry, &a, &br.owner));
    assert_false(b.allow(T0 + 10, &epoch, &retry, &other, &br.other_owner));
    b.remove_owner(&br.owner);
    b.record(trial, true, T0 + 11);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 2);
    assert_int_equal(other.runs, 2);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_breaker_opens_after_five_consecutive_failures),
        cmocka_unit_test(test_a_success_resets_the_consecutive_count),
        cmocka_unit_test(test_consecutive_zero_turns_that_trigger_off),
        cmocka_unit_test(test_ratio_trigger_waits_for_min_calls_then_opens_at_the_ratio),
        cmocka_unit_test(test_ratio_window_forgets_the_oldest_outcome),
        cmocka_unit_test(test_ratio_just_below_the_threshold_stays_closed),
        cmocka_unit_test(test_open_breaker_refuses_until_the_reset_timeout_to_the_nanosecond),
        cmocka_unit_test(test_half_open_limits_trials_in_progress),
        cmocka_unit_test(test_half_open_closes_after_the_success_threshold),
        cmocka_unit_test(test_one_failed_trial_reopens_for_a_full_reset_timeout),
        cmocka_unit_test(test_outcomes_allowed_in_an_earlier_state_are_ignored),
        cmocka_unit_test(test_state_callback_sees_every_change_in_order),
        cmocka_unit_test(test_replacing_the_callback_frees_the_old_user_at_once),
        cmocka_unit_test(test_changes_made_inside_the_callback_are_reported_after_it_returns),
        cmocka_unit_test(test_a_callback_that_replaces_itself_keeps_its_user_until_it_returns),
        cmocka_unit_test(test_a_throwing_callback_loses_only_that_notification),
        cmocka_unit_test(test_refused_tasks_are_woken_by_the_next_change),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
