// Unit tests of the retry policy's backoff schedule: constant, exponential with its cap (no
// overflow at any attempt), and the jitter formula the public header documents, draw by draw.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include "flow/retry_policy.hpp"

using fluxus::RetryPolicy;

namespace {

constexpr uint64_t kDayNs = 86400ull * 1000000000ull;

RetryPolicy policy(int32_t backoff, uint64_t base, uint64_t max) {
    RetryPolicy p;
    p.max_attempts = 10;
    p.backoff = backoff;
    p.base_ns = base;
    p.max_ns = max;
    return p;
}

// splitmix64 of seed + worker + n x golden, as fluxus_stage_set_retry_seed() documents it.
uint64_t documented_draw(uint64_t seed, uint32_t worker, uint64_t n) {
    uint64_t z = seed + worker + n * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void test_retry_is_enabled_only_above_one_attempt(void **) {
    RetryPolicy p;
    assert_int_equal(p.max_attempts, 1);
    assert_false(p.enabled());
    p.max_attempts = 2;
    assert_true(p.enabled());
}

void test_constant_backoff_waits_base_every_time(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_CONSTANT, 250, 1000);
    uint64_t draw = 0;
    for (uint32_t next = 2; next < 40; ++next) assert_int_equal(p.delay_ns(next, 0, &draw), 250);
    assert_int_equal(draw, 0);  // no jitter drawn
}

void test_exponential_backoff_doubles_from_base_up_to_max(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_EXPONENTIAL, 100, 1000);
    uint64_t draw = 0;
    const uint64_t want[] = {100, 200, 400, 800, 1000, 1000, 1000};
    for (uint32_t i = 0; i < 7; ++i) assert_int_equal(p.delay_ns(i + 2, 0, &draw), want[i]);
    // Attempt numbers below 2 count as the first retry.
    assert_int_equal(p.delay_ns(1, 0, &draw), 100);
    assert_int_equal(p.delay_ns(0, 0, &draw), 100);
    assert_int_equal(draw, 0);
}

void test_exponential_cap_that_is_not_a_power_of_two_multiple_is_reached_exactly(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_EXPONENTIAL, 3, 10);
    uint64_t draw = 0;
    assert_int_equal(p.delay_ns(2, 0, &draw), 3);
    assert_int_equal(p.delay_ns(3, 0, &draw), 6);
    assert_int_equal(p.delay_ns(4, 0, &draw), 10);
    assert_int_equal(p.delay_ns(5, 0, &draw), 10);
}

void test_exponential_backoff_never_overflows(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_EXPONENTIAL, 1, kDayNs);
    uint64_t draw = 0;
    assert_int_equal(p.delay_ns(2 + 46, 0, &draw), 1ull << 46);  // 2^46 ns: 19.5 hours
    assert_int_equal(p.delay_ns(2 + 47, 0, &draw), kDayNs);      // 2^47 ns is past one day
    assert_int_equal(p.delay_ns(1000, 0, &draw), kDayNs);
    assert_int_equal(p.delay_ns(UINT32_MAX, 0, &draw), kDayNs);
}

void test_zero_base_means_no_wait(void **) {
    uint64_t draw = 0;
    RetryPolicy e = policy(FLUXUS_BACKOFF_EXPONENTIAL, 0, 1000);
    assert_int_equal(e.delay_ns(5, 0, &draw), 0);
    RetryPolicy c = policy(FLUXUS_BACKOFF_CONSTANT, 0, 0);
    assert_int_equal(c.delay_ns(5, 0, &draw), 0);
    RetryPolicy j = policy(FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 0, 0);
    assert_int_equal(j.delay_ns(5, 0, &draw), 0);
    assert_int_equal(draw, 1);  // the draw is still used up
}

void test_jitter_follows_the_documented_formula_draw_by_draw(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 1000, 1000000);
    p.seed = 0x1234;
    uint64_t draw = 0;
    for (uint64_t n = 1; n <= 200; ++n) {
        uint32_t next = uint32_t(2 + n % 12);
        uint64_t d = 1000ull << (next - 2);
        if (d > 1000000) d = 1000000;
        uint64_t got = p.delay_ns(next, 3, &draw);
        assert_int_equal(draw, n);
        assert_int_equal(got, documented_draw(0x1234, 3, n) % (d + 1));
        assert_true(got <= d);
    }
}

void test_jitter_is_reproducible_and_differs_between_workers_and_seeds(void **) {
    RetryPolicy p = policy(FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 1000000, 1000000);
    uint64_t d0 = 0, d0_again = 0, d1 = 0;
    int same_worker = 0, differ_worker = 0, differ_seed = 0;
    RetryPolicy q = p;
    q.seed = 99;
    uint64_t dq = 0;
    for (int i = 0; i < 50; ++i) {
        uint64_t a = p.delay_ns(2, 0, &d0), b = p.delay_ns(2, 0, &d0_again);
        uint64_t c = p.delay_ns(2, 1, &d1), e = q.delay_ns(2, 0, &dq);
        same_worker += a == b;
        differ_worker += a != c;
        differ_seed += a != e;
    }
    assert_int_equal(same_worker, 50);
    assert_true(differ_worker >= 45);
    assert_true(differ_seed >= 45);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_is_enabled_only_above_one_attempt),
        cmocka_unit_test(test_constant_backoff_waits_base_every_time),
        cmocka_unit_test(test_exponential_backoff_doubles_from_base_up_to_max),
        cmocka_unit_test(test_exponential_cap_that_is_not_a_power_of_two_multiple_is_reached_exactly),
        cmocka_unit_test(test_exponential_backoff_never_overflows),
        cmocka_unit_test(test_zero_base_means_no_wait),
        cmocka_unit_test(test_jitter_follows_the_documented_formula_draw_by_draw),
        cmocka_unit_test(test_jitter_is_reproducible_and_differs_between_workers_and_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
