// Unit tests of the rate limiter's token bucket on a virtual clock the test sets: exact refill
// at the nanosecond, the catch-up allowance, smooth mode, rate 0, setters, give-back, counters,
// and which waiting tasks a change wakes.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <cmath>
#include <cstring>

#include "fake_task.hpp"
#include "flow/rate_limiter.hpp"
#include "util/status.hpp"

using fluxus::RateLimiter;
using fluxus_test::BareRuntime;
using fluxus_test::CountingTask;

namespace {

constexpr uint64_t T0 = 1000000000000ull;  // the virtual clock's start: 1000 s
constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kMs = 1000000ull;

// A bare runtime on a virtual clock standing at T0, so the limiter's construction time is T0.
struct Clocked : BareRuntime {
    Clocked() { rt->set_virtual_clock(true, T0); }
};

void test_new_bucket_holds_exactly_burst_tokens(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 5);
    assert_true(lim.virtual_clock());
    assert_int_equal(lim.now(), T0);
    assert_int_equal(lim.try_take(10, T0), 5);  // not burst + the 1 ms allowance
    assert_int_equal(lim.try_take(1, T0), 0);
}

void test_token_bucket_refills_at_the_configured_rate(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 1);
    assert_int_equal(lim.try_take(1, T0), 1);
    // 1000/s: one token every 1 ms, due at exactly that nanosecond.
    for (uint64_t k = 1; k <= 100; ++k) {
        assert_int_equal(lim.try_take(1, T0 + k * kMs - 1), 0);
        assert_int_equal(lim.try_take(1, T0 + k * kMs), 1);
    }
    assert_int_equal(lim.granted(), 101);
    assert_int_equal(lim.rejected(), 100);
}

void test_fractional_interval_token_is_due_at_the_rounded_up_nanosecond(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 3, 1);
    assert_int_equal(lim.try_take(1, T0), 1);
    // 1/3 s is 333333333.33 ns: the token is there at 333333334 ns, not one ns before.
    assert_int_equal(lim.wait_ns(1, T0), 333333334u);
    assert_int_equal(lim.try_take(1, T0 + 333333333), 0);
    assert_int_equal(lim.try_take(1, T0 + 333333334), 1);
    // The remainder is carried: the next is due 2/3 s after T0 (666666667), the third at 1 s.
    assert_int_equal(lim.wait_ns(1, T0 + 333333334), 333333333u);
    assert_int_equal(lim.try_take(1, T0 + 666666666), 0);
    assert_int_equal(lim.try_take(1, T0 + 666666667), 1);
    assert_int_equal(lim.try_take(1, T0 + kSec - 1), 0);
    assert_int_equal(lim.try_take(1, T0 + kSec), 1);
}

void test_refill_does_not_drift_however_the_clock_is_stepped(void **) {
    Clocked c;
    RateLimiter stepped(c.rt, 3, 1), jumped(c.rt, 3, 1);
    uint64_t got = 0;
    // Uneven steps (a prime stride) over exactly 10 s, taking whatever is there at each step.
    const uint64_t end = T0 + 10 * kSec;
    for (uint64_t t = T0; t < end; t += 7919 * 1013) got += stepped.try_take(1, t);
    got += stepped.try_take(1, end);
    // Tokens at 0, 1/3, 2/3, 1, ... 10 s: 31, the same as reading the clock twice.
    assert_int_equal(got, 31);
    uint64_t once = jumped.try_take(1, T0);
    for (int i = 1; i <= 30; ++i) once += jumped.try_take(1, T0 + (uint64_t(i) * kSec + 2) / 3);
    assert_int_equal(once, 31);
}

void test_wait_ns_answer_is_exact(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 7, 4);
    assert_int_equal(lim.wait_ns(4, T0), 0);
    assert_int_equal(lim.try_take(4, T0), 4);
    uint64_t w = lim.wait_ns(2, T0);
    assert_int_equal(w, 285714286u);  // ceil(2e9 / 7)
    assert_false(lim.try_take_all(2, T0 + w - 1));
    assert_true(lim.try_take_all(2, T0 + w));
}

uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void test_wait_ns_is_enough_at_fractional_rates(void **) {
    // Two limiters in the same state: one is asked before the answer, the other at it. The
    // header promises that the tokens are there at now + wait_ns(). At fractional rates the
    // answer can be 1 ns past the earliest possible (about 1 case in 2000 here: rounding in the
    // division), so "before" is 2 ns before.
    Clocked c;
    uint64_t seed = 42;
    for (int trial = 0; trial < 3000; ++trial) {
        double rate = double(1 + splitmix(&seed) % 1000000) / double(1 + splitmix(&seed) % 997);
        uint32_t burst = uint32_t(1 + splitmix(&seed) % 5);
        uint64_t t1 = T0 + splitmix(&seed) % 1000000, t2 = t1 + splitmix(&seed) % 1000003;
        RateLimiter early(c.rt, rate, burst), on_time(c.rt, rate, burst);
        early.try_take(burst, T0);
        on_time.try_take(burst, T0);
        early.try_take(1, t1);  // a take in between leaves a fractional remainder
        on_time.try_take(1, t1);
        uint32_t n = uint32_t(1 + splitmix(&seed) % burst);
        uint64_t w = on_time.wait_ns(n, t2);
        assert_int_equal(early.wait_ns(n, t2), w);
        if (w == 0 || w == UINT64_MAX) continue;
        if (w >= 2) assert_false(early.try_take_all(n, t2 + w - 2));
        assert_true(on_time.try_take_all(n, t2 + w));
    }
}

void test_wait_ns_is_never_for_more_than_capacity_or_at_rate_zero(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 5);
    assert_int_equal(lim.capacity(), 6);  // 5 + 1000/s x 1 ms
    assert_int_equal(lim.wait_ns(6, T0), 1 * kMs);
    assert_int_equal(lim.wait_ns(7, T0), UINT64_MAX);
    assert_int_equal(lim.set_rate(0), FLUXUS_OK);
    assert_int_equal(lim.wait_ns(1, T0), UINT64_MAX);  // tokens held, but nothing passes
}

void test_capacity_is_burst_plus_one_millisecond_of_tokens(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1500, 5);
    assert_int_equal(lim.capacity(), 6);  // floor(5 + 1.5)
    assert_int_equal(lim.set_rate(1e6), FLUXUS_OK);
    assert_int_equal(lim.capacity(), 1005);
    assert_int_equal(lim.set_rate(999), FLUXUS_OK);
    assert_int_equal(lim.capacity(), 5);  // 5.999 rounds down
    assert_int_equal(lim.set_mode(FLUXUS_RATE_SMOOTH), FLUXUS_OK);
    assert_int_equal(lim.capacity(), 1);
    assert_int_equal(lim.set_rate(2000), FLUXUS_OK);
    assert_int_equal(lim.capacity(), 3);  // 1 + 2
}

void test_idle_bucket_fills_to_burst_plus_the_catch_up_allowance(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 5);
    assert_int_equal(lim.try_take(5, T0), 5);
    assert_int_equal(lim.try_take(100, T0 + 60 * kSec), 6);
}

void test_backlogged_consumer_may_catch_up_twenty_more_milliseconds(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 1);
    assert_int_equal(lim.try_take(100, T0), 1);  // got less than asked: backlogged
    // Capacity 2 plus 20 ms at 1000/s while backlogged.
    assert_int_equal(lim.try_take(100, T0 + kSec), 22);
    assert_int_equal(lim.try_take(1, T0 + kSec + kMs), 1);  // a full grant ends the backlog
    assert_int_equal(lim.try_take(100, T0 + 2 * kSec), 2);
}

void test_rate_zero_stops_the_limiter_and_keeps_its_tokens(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1, 5);
    assert_int_equal(lim.try_take(2, T0), 2);
    assert_int_equal(lim.set_rate(0), FLUXUS_OK);
    assert_int_equal(lim.try_take(1, T0 + kSec), 0);
    assert_false(lim.try_take_all(1, T0 + 100 * kSec));
    assert_int_equal(c.rt->advance_clock(100 * kSec), FLUXUS_OK);
    assert_int_equal(lim.set_rate(1), FLUXUS_OK);  // nothing accrued while stopped
    assert_int_equal(lim.try_take(10, T0 + 100 * kSec), 3);
}

void test_smooth_mode_spaces_items_at_one_over_rate(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 10, 5);
    assert_int_equal(lim.set_mode(FLUXUS_RATE_SMOOTH), FLUXUS_OK);
    assert_int_equal(lim.mode(), FLUXUS_RATE_SMOOTH);
    // The bucket is clamped to its smaller capacity: one token now, not five.
    assert_int_equal(lim.try_take(5, T0), 1);
    uint64_t t = T0 + lim.wait_ns(1, T0);
    assert_int_equal(lim.try_take(1, t), 1);
    for (int i = 0; i < 10; ++i) {
        assert_int_equal(lim.wait_ns(1, t), 100 * kMs);
        assert_int_equal(lim.try_take(1, t + 100 * kMs - 1), 0);
        t += 100 * kMs;
        assert_int_equal(lim.try_take(1, t), 1);
    }
}

void test_setting_burst_clamps_the_tokens_held_without_refilling(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1, 10);
    assert_int_equal(lim.set_burst(2), FLUXUS_OK);
    assert_int_equal(lim.burst(), 2);
    assert_int_equal(lim.try_take(10, T0), 2);
    assert_int_equal(lim.set_burst(10), FLUXUS_OK);  // raising adds no tokens
    assert_int_equal(lim.try_take(10, T0), 0);
}

void test_setters_refuse_out_of_range_values_and_keep_the_old_ones(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 5, 3);
    assert_int_equal(lim.set_rate(-1), FLUXUS_ERANGE);
    assert_true(strlen(fluxus::last_error_message()) > 0);
    assert_int_equal(lim.set_rate(NAN), FLUXUS_ERANGE);
    assert_int_equal(lim.set_rate(INFINITY), FLUXUS_ERANGE);
    assert_int_equal(lim.set_rate(1e9 * 1.000001), FLUXUS_ERANGE);
    assert_true(lim.rate() == 5);
    assert_int_equal(lim.set_rate(1e9), FLUXUS_OK);
    assert_int_equal(lim.set_burst(0), FLUXUS_ERANGE);
    assert_int_equal(lim.set_burst((1u << 30) + 1), FLUXUS_ERANGE);
    assert_int_equal(lim.burst(), 3);
    assert_int_equal(lim.set_burst(1u << 30), FLUXUS_OK);
    assert_int_equal(lim.set_mode(2), FLUXUS_ERANGE);
    assert_int_equal(lim.set_mode(-1), FLUXUS_ERANGE);
    assert_int_equal(lim.mode(), FLUXUS_RATE_TOKEN_BUCKET);
    assert_true(RateLimiter::valid_rate(0));
    assert_false(RateLimiter::valid_rate(-0.5));
    assert_true(RateLimiter::valid_burst(1));
    assert_false(RateLimiter::valid_burst(0));
}

void test_try_take_all_takes_all_or_nothing(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1, 3);
    assert_false(lim.try_take_all(4, T0));
    assert_true(lim.try_take_all(3, T0));
    assert_false(lim.try_take_all(1, T0));
    assert_int_equal(lim.granted(), 3);
    assert_int_equal(lim.rejected(), 2);
    assert_int_equal(lim.try_take(0, T0), 0);  // asking for nothing is not a rejection
    assert_int_equal(lim.rejected(), 2);
}

void test_give_back_returns_tokens_up_to_capacity(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1, 3);  // capacity 3 (1/s x 1 ms adds a millionth)
    assert_int_equal(lim.try_take(3, T0), 3);
    lim.give_back(2);
    assert_int_equal(lim.granted(), 1);
    assert_int_equal(lim.try_take(3, T0), 2);
    lim.give_back(100);  // into an emptied bucket: only capacity fits
    assert_int_equal(lim.try_take(100, T0), 3);
    assert_int_equal(lim.granted(), 3);
}

void test_changes_wake_every_registered_task_once(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1, 1);
    CountingTask a(c.rt, &c.owner), b(c.rt, &c.other_owner);
    lim.add_waiter(&a, &c.owner);
    lim.add_waiter(&a, &c.owner);  // the same task twice: one entry
    lim.add_waiter(&b, &c.other_owner);
    assert_int_equal(lim.set_rate(2), FLUXUS_OK);
    assert_int_equal(c.run_queued(), 2);
    assert_int_equal(a.runs, 1);
    assert_int_equal(b.runs, 1);
    // Notified waiters are dropped: the next change wakes nobody.
    lim.give_back(1);
    assert_int_equal(c.run_queued(), 0);
    // remove_owner() drops only that owner's tasks.
    lim.add_waiter(&a, &c.owner);
    lim.add_waiter(&b, &c.other_owner);
    lim.remove_owner(&c.owner);
    assert_int_equal(lim.set_mode(FLUXUS_RATE_SMOOTH), FLUXUS_OK);
    assert_int_equal(c.run_queued(), 1);
    assert_int_equal(a.runs, 1);
    assert_int_equal(b.runs, 2);
}

void test_take_or_wait_registers_only_when_nothing_is_granted(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 4, 1);
    CountingTask a(c.rt, &c.owner);
    uint64_t retry = 123;
    assert_int_equal(lim.take_or_wait(2, T0, &a, &c.owner, &retry), 1);
    assert_int_equal(retry, 0);
    assert_int_equal(lim.set_burst(1), FLUXUS_OK);
    assert_int_equal(c.run_queued(), 0);  // a partial grant did not register it
    assert_int_equal(lim.take_or_wait(1, T0, &a, &c.owner, &retry), 0);
    assert_int_equal(retry, 250 * kMs);  // wait_ns(1): 1/4 s
    lim.give_back(1);
    assert_int_equal(c.run_queued(), 1);
    assert_int_equal(a.runs, 1);
    assert_int_equal(lim.set_rate(0), FLUXUS_OK);
    assert_int_equal(lim.take_or_wait(1, T0, &a, &c.owner, &retry), 0);
    assert_int_equal(retry, UINT64_MAX);  // only a change can help
    lim.remove_owner(&c.owner);
}

void test_host_acquire_on_a_virtual_clock_returns_the_documented_codes(void **) {
    Clocked c;
    RateLimiter lim(c.rt, 1000, 2);
    assert_int_equal(lim.acquire(0, 0), FLUXUS_OK);
    assert_int_equal(lim.acquire(2, 0), FLUXUS_OK);
    assert_int_equal(lim.acquire(1, 0), FLUXUS_ETIMEDOUT);  // try once: the clock stands still
    assert_int_equal(lim.rejected(), 1);
    assert_int_equal(lim.acquire(4, 0), FLUXUS_ERANGE);  // above capacity 3
    assert_true(strlen(fluxus::last_error_message()) > 0);
    assert_int_equal(c.rt->advance_clock(1 * kMs), FLUXUS_OK);
    assert_int_equal(lim.acquire(1, 0), FLUXUS_OK);
    lim.close_host_waiters();
    assert_int_equal(lim.acquire(1, 1000), FLUXUS_ECANCELED);
    assert_int_equal(lim.granted(), 3);
}

void test_same_clock_tells_virtual_from_real_clocks(void **) {
    Clocked c;
    BareRuntime real, other;
    other.rt->set_virtual_clock(true, 0);
    RateLimiter virt(c.rt, 1, 1), wall(nullptr, 1, 1);
    assert_true(virt.same_clock(c.rt));
    assert_false(virt.same_clock(real.rt));
    assert_false(virt.same_clock(other.rt));
    assert_true(wall.same_clock(real.rt));
    assert_false(wall.same_clock(c.rt));
    assert_false(wall.virtual_clock());
    assert_null(wall.runtime());
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_bucket_holds_exactly_burst_tokens),
        cmocka_unit_test(test_token_bucket_refills_at_the_configured_rate),
        cmocka_unit_test(test_fractional_interval_token_is_due_at_the_rounded_up_nanosecond),
        cmocka_unit_test(test_refill_does_not_drift_however_the_clock_is_stepped),
        cmocka_unit_test(test_wait_ns_answer_is_exact),
        cmocka_unit_test(test_wait_ns_is_enough_at_fractional_rates),
        cmocka_unit_test(test_wait_ns_is_never_for_more_than_capacity_or_at_rate_zero),
        cmocka_unit_test(test_capacity_is_burst_plus_one_millisecond_of_tokens),
        cmocka_unit_test(test_idle_bucket_fills_to_burst_plus_the_catch_up_allowance),
        cmocka_unit_test(test_backlogged_consumer_may_catch_up_twenty_more_milliseconds),
        cmocka_unit_test(test_rate_zero_stops_the_limiter_and_keeps_its_tokens),
        cmocka_unit_test(test_smooth_mode_spaces_items_at_one_over_rate),
        cmocka_unit_test(test_setting_burst_clamps_the_tokens_held_without_refilling),
        cmocka_unit_test(test_setters_refuse_out_of_range_values_and_keep_the_old_ones),
        cmocka_unit_test(test_try_take_all_takes_all_or_nothing),
        cmocka_unit_test(test_give_back_returns_tokens_up_to_capacity),
        cmocka_unit_test(test_changes_wake_every_registered_task_once),
        cmocka_unit_test(test_take_or_wait_registers_only_when_nothing_is_granted),
        cmocka_unit_test(test_host_acquire_on_a_virtual_clock_returns_the_documented_codes),
        cmocka_unit_test(test_same_clock_tells_virtual_from_real_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
