/*
 * A host-driven runtime inside a host's own event loop: the loop polls fluxus_runtime_get_fd()
 * with fluxus_runtime_get_next_timer_us() as its timeout and calls fluxus_runtime_run_once() when
 * woken. While nothing is due it makes no calls; a push from another thread and a timer wake it.
 * (Reaction times are printed, not asserted: these machines are shared.)
 */
#include "test_util.h"

#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

typedef struct loop {
    fluxus_runtime *rt;
    int fd;
    uint32_t stop;
    uint64_t rounds;   /* run_once calls */
    uint64_t wakeups;  /* wake-up callback calls */
    uint64_t delivered;
    uint64_t delivered_at_ns;
    uint64_t timer_at_ns;
} loop;

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_wakeup(void *user) {
    TU_ADD(&((loop *)user)->wakeups, 1);
}

static int32_t sink(void *user, uint64_t item) {
    loop *l = (loop *)user;
    (void)item;
    TU_STORE(&l->delivered_at_ns, mono_ns());
    TU_ADD(&l->delivered, 1);
    return 0;
}

static void on_timer(void *user) {
    TU_STORE(&((loop *)user)->timer_at_ns, mono_ns());
}

/* The host's loop: sleep in poll() until fluxus has work, then run it. */
static void *host_main(void *arg) {
    loop *l = (loop *)arg;
    while (!TU_LOAD(&l->stop)) {
        uint64_t us = 0;
        struct pollfd pfd;
        int timeout_ms;
        uint32_t ran = 0;
        if (fluxus_runtime_get_next_timer_us(&us, l->rt) != FLUXUS_OK) break;
        /* Wake at least every 20 ms to see `stop`; otherwise sleep as long as fluxus allows. */
        timeout_ms = us >= 20000 ? 20 : (int)((us + 999) / 1000);
        pfd.fd = l->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (poll(&pfd, 1, timeout_ms) == 0 && us >= 20000) continue; /* only the stop check */
        if (fluxus_runtime_run_once(&ran, l->rt) != FLUXUS_OK) break;
        TU_ADD(&l->rounds, 1);
    }
    return NULL;
}

static void test_the_hosts_loop_sleeps_while_idle_and_wakes_for_pushes_and_timers(void **state) {
    loop l;
    fluxus_pipeline *p = NULL;
    pthread_t host;
    uint64_t r0, t0, pushed_at, timer_set_at, id = 0;
    int32_t fd = -1;
    int i;
    (void)state;
    memset(&l, 0, sizeof l);
    TU_OK(fluxus_runtime_new(&l.rt));
    TU_OK(fluxus_runtime_set_workers(l.rt, 0));
    TU_OK(fluxus_runtime_set_wakeup(l.rt, on_wakeup, &l, NULL));
    TU_OK(fluxus_runtime_get_fd(&fd, l.rt));
    l.fd = fd;
    TU_OK(fluxus_pipeline_new(&p, l.rt, "hosted"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", sink, &l, NULL));
    TU_OK(fluxus_pipeline_start(p));
    assert_int_equal(pthread_create(&host, NULL, host_main, &l), 0);

    /* Idle: once what the start made ready has run, the loop does not run fluxus at all. */
    tu_sleep_us(100000);
    r0 = TU_LOAD(&l.rounds);
    tu_sleep_us(300000);
    print_message("idle for 300 ms: %llu run_once calls\n",
                  (unsigned long long)(TU_LOAD(&l.rounds) - r0));
    assert_int_equal(TU_LOAD(&l.rounds), r0);

    /* Pushes from this thread wake it, each delivered. */
    for (i = 0; i < 20; i++) {
        pushed_at = mono_ns();
        TU_OK(fluxus_pipeline_push(p, (uint64_t)i, 1000));
        t0 = tu_now_ms();
        while (TU_LOAD(&l.delivered) < (uint64_t)i + 1) {
            assert_true(tu_now_ms() - t0 < TU_WAIT_MS);
            tu_sleep_us(100);
        }
        if (i == 19)
            print_message("push to delivery through the host's poll loop: %.3f ms\n",
                          (double)(TU_LOAD(&l.delivered_at_ns) - pushed_at) / 1e6);
    }

    /* A timer wakes it (its deadline is the loop's poll timeout). */
    timer_set_at = mono_ns();
    TU_OK(fluxus_runtime_call_after(&id, l.rt, 5000000ull, on_timer, &l, NULL));
    t0 = tu_now_ms();
    while (TU_LOAD(&l.timer_at_ns) == 0) {
        assert_true(tu_now_ms() - t0 < TU_WAIT_MS);
        tu_sleep_us(100);
    }
    assert_true(TU_LOAD(&l.timer_at_ns) - timer_set_at >= 5000000ull); /* not early */
    print_message("5 ms timer ran after %.3f ms\n",
                  (double)(TU_LOAD(&l.timer_at_ns) - timer_set_at) / 1e6);

    TU_OK(fluxus_pipeline_close_input(p));
    t0 = tu_now_ms();
    while (fluxus_pipeline_wait(p, 0) == FLUXUS_ETIMEDOUT) {
        assert_true(tu_now_ms() - t0 < TU_WAIT_MS);
        tu_sleep_us(1000);
    }
    TU_STORE(&l.stop, 1u);
    assert_int_equal(pthread_join(host, NULL), 0);
    assert_int_equal(TU_LOAD(&l.delivered), 20);
    assert_true(TU_LOAD(&l.wakeups) >= 1); /* the callback heard of the work too */
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(l.rt));
}

static void test_next_timer_says_when_work_is_due(void **state) {
    fluxus_runtime *rt = NULL;
    uint64_t us = 0, id = 0;
    loop l;
    (void)state;
    memset(&l, 0, sizeof l);
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 0));
    TU_OK(fluxus_runtime_start(rt));
    TU_OK(fluxus_runtime_get_next_timer_us(&us, rt));
    assert_true(us == UINT64_MAX); /* nothing scheduled */
    TU_OK(fluxus_runtime_call_after(&id, rt, 50000000ull, on_timer, &l, NULL));
    TU_OK(fluxus_runtime_get_next_timer_us(&us, rt));
    assert_true(us > 0 && us <= 50000);
    TU_OK(fluxus_runtime_cancel_timer(rt, id));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_get_next_timer_us(NULL, rt));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_a_threaded_runtime_has_no_host_loop_hooks(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    int32_t fd = -1;
    uint64_t us = 0;
    (void)state;
    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_get_fd(&fd, rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_get_next_timer_us(&us, rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_wakeup(rt, on_wakeup, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_get_fd(NULL, rt));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_hosts_loop_sleeps_while_idle_and_wakes_for_pushes_and_timers),
        cmocka_unit_test(test_next_timer_says_when_work_is_due),
        cmocka_unit_test(test_a_threaded_runtime_has_no_host_loop_hooks),
    };
    return TU_RUN_GROUP(tests);
}
