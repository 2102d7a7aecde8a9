// Unit tests of the concurrency limiter (a counting semaphore): grants and releases at the
// boundaries, a lowered maximum that revokes nothing, the waiters a change wakes, and the host
// acquire's return codes.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "fake_task.hpp"
#include "flow/concurrency_limiter.hpp"
#include "util/status.hpp"

using fluxus::ConcurrencyLimiter;
using fluxus_test::BareRuntime;
using fluxus_test::CountingTask;

namespace {

void test_try_take_grants_at_most_the_free_permits(void **) {
    ConcurrencyLimiter lim(3);
    assert_int_equal(lim.try_take(0), 0);
    assert_int_equal(lim.try_take(2), 2);
    assert_int_equal(lim.try_take(5), 1);
    assert_int_equal(lim.try_take(1), 0);
    assert_int_equal(lim.in_use(), 3);
    assert_int_equal(lim.max(), 3);
}

void test_try_take_all_takes_all_or_nothing(void **) {
    ConcurrencyLimiter lim(4);
    assert_false(lim.try_take_all(5));
    assert_int_equal(lim.in_use(), 0);
    assert_true(lim.try_take_all(3));
    assert_false(lim.try_take_all(2));
    assert_int_equal(lim.in_use(), 3);
    assert_true(lim.try_take_all(1));
    assert_false(lim.try_take_all(1));
    assert_int_equal(lim.in_use(), 4);
}

void test_give_releases_at_most_what_is_in_use(void **) {
    ConcurrencyLimiter lim(5);
    assert_int_equal(lim.try_take(3), 3);
    lim.give(1);
    assert_int_equal(lim.in_use(), 2);
    lim.give(10);  // the extra is ignored
    assert_int_equal(lim.in_use(), 0);
    assert_int_equal(lim.try_take(9), 5);  // not more than max after an over-give
}

void test_give_checked_refuses_more_than_is_in_use(void **) {
    ConcurrencyLimiter lim(5);
    assert_int_equal(lim.try_take(2), 2);
    assert_false(lim.give_checked(3));
    assert_int_equal(lim.in_use(), 2);  // nothing released
    assert_true(lim.give_checked(0));
    assert_true(lim.give_checked(2));
    assert_int_equal(lim.in_use(), 0);
    assert_false(lim.give_checked(1));
}

void test_set_max_refuses_zero_and_above_two_to_the_thirtieth(void **) {
    ConcurrencyLimiter lim(2);
    assert_int_equal(lim.set_max(0), FLUXUS_ERANGE);
    assert_true(strlen(fluxus::last_error_message()) > 0);
    assert_int_equal(lim.set_max((1u << 30) + 1), FLUXUS_ERANGE);
    assert_int_equal(lim.max(), 2);
    assert_int_equal(lim.set_max(1u << 30), FLUXUS_OK);
    assert_int_equal(lim.try_take(UINT32_MAX), 1u << 30);
    assert_true(ConcurrencyLimiter::valid_max(1));
    assert_false(ConcurrencyLimiter::valid_max(0));
}

void test_lowering_the_maximum_revokes_nothing(void **) {
    ConcurrencyLimiter lim(5);
    assert_int_equal(lim.try_take(5), 5);
    assert_int_equal(lim.set_max(2), FLUXUS_OK);
    assert_int_equal(lim.in_use(), 5);  // held permits stay held
    lim.give(3);
    assert_int_equal(lim.try_take(1), 0);  // 2 in use, max 2
    assert_false(lim.try_take_all(1));
    lim.give(1);
    assert_int_equal(lim.try_take(5), 1);
}

void test_releases_and_a_raised_maximum_wake_every_waiting_task_once(void **) {
    BareRuntime br;
    ConcurrencyLimiter lim(1);
    CountingTask a(br.rt, &br.owner), b(br.rt, &br.other_owner);
    assert_int_equal(lim.take_or_wait(1, &a, &br.owner), 1);
    assert_int_equal(lim.take_or_wait(1, &a, &br.owner), 0);
    assert_int_equal(lim.take_or_wait(3, &a, &br.owner), 0);  // still one entry
    assert_int_equal(lim.take_or_wait(1, &b, &br.other_owner), 0);
    assert_int_equal(lim.take_or_wait(0, &b, &br.other_owner), 0);
    assert_int_equal(br.run_queued(), 0);
    lim.give(1);
    assert_int_equal(br.run_queued(), 2);  // every waiter, not just one per free permit
    assert_int_equal(a.runs, 1);
    assert_int_equal(b.runs, 1);
    lim.give(1);  // nobody registered any more
    assert_int_equal(br.run_queued(), 0);
    assert_int_equal(lim.try_take(1), 1);
    assert_int_equal(lim.take_or_wait(1, &a, &br.owner), 0);
    assert_int_equal(lim.set_max(2), FLUXUS_OK);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 2);
}

void test_removed_owners_tasks_are_not_woken(void **) {
    BareRuntime br;
    ConcurrencyLimiter lim(1);
    CountingTask a(br.rt, &br.owner), b(br.rt, &br.other_owner);
    assert_int_equal(lim.try_take(1), 1);
    assert_int_equal(lim.take_or_wait(1, &a, &br.owner), 0);
    assert_int_equal(lim.take_or_wait(1, &b, &br.other_owner), 0);
    lim.remove_owner(&br.owner);
    assert_true(lim.give_checked(1));
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 0);
    assert_int_equal(b.runs, 1);
}

void test_host_acquire_returns_the_documented_codes(void **) {
    ConcurrencyLimiter lim(2);
    assert_int_equal(lim.acquire(0, 0), FLUXUS_OK);
    assert_int_equal(lim.acquire(3, 0), FLUXUS_ERANGE);
    assert_int_equal(lim.acquire(2, 0), FLUXUS_OK);
    assert_int_equal(lim.in_use(), 2);
    assert_int_equal(lim.acquire(1, 0), FLUXUS_ETIMEDOUT);
    assert_int_equal(lim.acquire(1, 5), FLUXUS_ETIMEDOUT);  // 5 ms of real time
    assert_true(strlen(fluxus::last_error_message()) > 0);
    {
        fluxus::CallbackScope inside;  // as if called from a fluxus callback
        assert_int_equal(lim.acquire(1, 5), FLUXUS_EINCALLBACK);
        assert_int_equal(lim.acquire(1, 0), FLUXUS_ETIMEDOUT);  // trying once is allowed
    }
    lim.close_host_waiters();
    lim.give(2);
    assert_int_equal(lim.acquire(1, 0), FLUXUS_ECANCELED);
    assert_int_equal(lim.in_use(), 0);
}

void test_blocked_acquire_is_woken_by_a_release(void **) {
    ConcurrencyLimiter lim(1);
    assert_int_equal(lim.try_take(1), 1);
    std::atomic<int32_t> rc{-1000};
    std::thread waiter([&] { rc = lim.acquire(1, UINT32_MAX); });
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    assert_int_equal(rc.load(), -1000);  // still waiting
    lim.give(1);
    waiter.join();
    assert_int_equal(rc.load(), FLUXUS_OK);
    assert_int_equal(lim.in_use(), 1);
}

void test_closing_cancels_a_blocked_acquire(void **) {
    ConcurrencyLimiter lim(1);
    assert_int_equal(lim.try_take(1), 1);
    std::atomic<int32_t> rc{-1000};
    std::thread waiter([&] { rc = lim.acquire(1, UINT32_MAX); });
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    lim.close_host_waiters();
    waiter.join();
    assert_int_equal(rc.load(), FLUXUS_ECANCELED);
    assert_int_equal(lim.in_use(), 1);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_try_take_grants_at_most_the_free_permits),
        cmocka_unit_test(test_try_take_all_takes_all_or_nothing),
        cmocka_unit_test(test_give_releases_at_most_what_is_in_use),
        cmocka_unit_test(test_give_checked_refuses_more_than_is_in_use),
        cmocka_unit_test(test_set_max_refuses_zero_and_above_two_to_the_thirtieth),
        cmocka_unit_test(test_lowering_the_maximum_revokes_nothing),
        cmocka_unit_test(test_releases_and_a_raised_maximum_wake_every_waiting_task_once),
        cmocka_unit_test(test_removed_owners_tasks_are_not_woken),
        cmocka_unit_test(test_host_acquire_returns_the_documented_codes),
        cmocka_unit_test(test_blocked_acquire_is_woken_by_a_release),
        cmocka_unit_test(test_closing_cancels_a_blocked_acquire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
