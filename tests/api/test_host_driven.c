/*
 * Host-driven mode (0 workers): fluxus starts no thread; the host runs the work with
 * fluxus_runtime_run_once() / run_for(), or by waiting on the pipeline.
 */
#include "test_util.h"

#include <dirent.h>

#ifndef HOST_N
#define HOST_N 5000u
#endif
#ifndef HOST_MAP_WORKERS
#define HOST_MAP_WORKERS 2u
#endif

typedef struct host_ctx {
    tu_tracker t;
    fluxus_runtime *rt;
    pthread_t expected[2]; /* threads allowed to run callbacks */
    uint32_t n_expected;
    uint64_t wrong_thread; /* callbacks that ran on another thread */
    uint64_t calls_by[2];
    int32_t run_once_inside_rc;
    int32_t run_for_inside_rc;
    uint32_t threads_seen_max; /* /proc/self/task count seen from inside callbacks */
} host_ctx;

/* Number of threads of this process (entries of /proc/self/task), or 0 if unavailable. */
static uint32_t thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    uint32_t n = 0;
    if (d == NULL) {
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

static void note_thread(host_ctx *c) {
    pthread_t self = pthread_self();
    uint32_t i;
    for (i = 0; i < c->n_expected; i++) {
        if (pthread_equal(self, c->expected[i])) {
            TU_ADD(&c->calls_by[i], 1);
            return;
        }
    }
    TU_ADD(&c->wrong_thread, 1);
}

static int32_t host_map(void *user, uint64_t in, uint64_t *out) {
    note_thread((host_ctx *)user);
    *out = in;
    return 0;
}

static int32_t host_sink(void *user, uint64_t item) {
    host_ctx *c = (host_ctx *)user;
    note_thread(c);
    if (item == 7) {
        uint32_t ran = 0, n;
        /* Re-entering the runtime from its own callback is refused. */
        c->run_once_inside_rc = fluxus_runtime_run_once(&ran, c->rt);
        c->run_for_inside_rc = fluxus_runtime_run_for(c->rt, 1);
        n = thread_count();
        if (n > c->threads_seen_max) {
            c->threads_seen_max = n;
        }
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static int32_t host_pull(void *user, uint64_t *item) {
    tu_range_source *s = (tu_range_source *)user;
    return tu_range_pull(s, item);
}

static fluxus_pipeline *build(host_ctx *c, fluxus_runtime *rt, tu_range_source *src) {
    fluxus_pipeline *p;
    uint32_t map = 0;
    memset(c, 0, sizeof *c);
    c->rt = rt;
    c->expected[0] = pthread_self();
    c->n_expected = 1;
    c->run_once_inside_rc = 1;
    c->run_for_inside_rc = 1;
    tu_tracker_init(&c->t, HOST_N);
    p = tu_pipeline(rt, "host", &c->t);
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 64));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", host_pull, src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", host_map, c, tu_user_free));
    TU_OK(fluxus_stage_set_workers(p, map, HOST_MAP_WORKERS));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", host_sink, c, tu_user_free));
    return p;
}

static void check_finished(host_ctx *c, fluxus_pipeline *p) {
    assert_int_equal(c->wrong_thread, 0);
    assert_int_equal(c->t.delivered_total, HOST_N);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, HOST_N);
    assert_int_equal(c->run_once_inside_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c->run_for_inside_rc, FLUXUS_EINCALLBACK);
    tu_assert_described(c->run_once_inside_rc);
}

static void test_run_once_runs_every_callback_on_the_calling_thread(void **state) {
    host_ctx c;
    tu_range_source src = {0, HOST_N, 0};
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = build(&c, rt, &src);
    uint32_t workers = 99, threads_before, iterations = 0, ran = 0, busy_calls = 0;
    int32_t st = -1;
    uint64_t t0 = tu_now_ms();
    (void)state;

    TU_OK(fluxus_runtime_get_workers(&workers, rt));
    assert_int_equal(workers, 0);
    threads_before = thread_count();
    TU_OK(fluxus_pipeline_start(p));
    assert_int_equal(thread_count(), threads_before); /* starting created no thread */
    for (;;) {
        TU_OK(fluxus_pipeline_get_state(&st, p));
        if (st == FLUXUS_STATE_FINISHED) {
            break;
        }
        TU_OK(fluxus_runtime_run_once(&ran, rt));
        if (ran > 0) {
            busy_calls++;
        }
        if (thread_count() > threads_before) {
            fail_msg("fluxus started a thread in host-driven mode");
        }
        iterations++;
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("pipeline did not finish after %u run_once calls", iterations);
        }
    }
    assert_true(busy_calls > 0);
    TU_OK(fluxus_runtime_run_once(NULL, rt)); /* `ran` may be NULL */
    TU_OK(fluxus_runtime_run_once(&ran, rt));
    assert_int_equal(ran, 0); /* idle once finished */
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_true(c.threads_seen_max == 0 || c.threads_seen_max == threads_before);
    check_finished(&c, p);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&c.t);
}

static void test_run_for_drives_the_pipeline_to_completion(void **state) {
    host_ctx c;
    tu_range_source src = {0, HOST_N, 0};
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = build(&c, rt, &src);
    int32_t st = -1;
    uint64_t t0 = tu_now_ms();
    (void)state;

    TU_OK(fluxus_pipeline_start(p));
    for (;;) {
        TU_OK(fluxus_pipeline_get_state(&st, p));
        if (st == FLUXUS_STATE_FINISHED) {
            break;
        }
        TU_OK(fluxus_runtime_run_for(rt, 10));
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("pipeline did not finish");
        }
    }
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_finished(&c, p);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&c.t);
}

static void test_pipeline_wait_in_host_mode_runs_the_work_itself(void **state) {
    host_ctx c;
    tu_range_source src = {0, HOST_N, 0};
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = build(&c, rt, &src);
    uint32_t threads_before = thread_count();
    (void)state;

    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(thread_count(), threads_before);
    check_finished(&c, p);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&c.t);
}

typedef struct host_worker {
    fluxus_runtime *rt;
    uint32_t *stop;
    uint32_t errors;
} host_worker;

static void *host_worker_main(void *arg) {
    host_worker *w = (host_worker *)arg;
    while (!TU_LOAD(w->stop)) {
        if (fluxus_runtime_run_for(w->rt, 5) != FLUXUS_OK) {
            w->errors++;
        }
        tu_sleep_us(50); /* run_for returns at once while no pipeline runs */
    }
    return NULL;
}

static void test_two_host_threads_calling_run_for_act_as_workers(void **state) {
    host_ctx c;
    tu_range_source src = {0, HOST_N, 0};
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = build(&c, rt, &src);
    pthread_t th[2];
    host_worker w[2];
    uint32_t stop = 0, i;
    int32_t st = -1;
    uint64_t t0;
    (void)state;

    TU_OK(fluxus_runtime_start(rt)); /* host mode: starts no thread */
    for (i = 0; i < 2; i++) {
        w[i].rt = rt;
        w[i].stop = &stop;
        w[i].errors = 0;
    }
    /* Only the two host threads may run callbacks; the test thread just watches the state. The
     * expected thread ids are stored before the pipeline starts, so before any callback. */
    c.n_expected = 2;
    assert_int_equal(pthread_create(&th[0], NULL, host_worker_main, &w[0]), 0);
    assert_int_equal(pthread_create(&th[1], NULL, host_worker_main, &w[1]), 0);
    c.expected[0] = th[0];
    c.expected[1] = th[1];
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    for (;;) {
        TU_OK(fluxus_pipeline_get_state(&st, p));
        if (st == FLUXUS_STATE_FINISHED) {
            break;
        }
        tu_sleep_us(1000);
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("pipeline did not finish");
        }
    }
    TU_STORE(&stop, 1);
    for (i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].errors, 0);
    }
    assert_true(c.calls_by[0] + c.calls_by[1] > 0);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_finished(&c, p);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&c.t);
}

static void test_run_once_on_a_runtime_with_workers_returns_estate(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    uint32_t ran = 0;
    (void)state;

    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_run_once(&ran, rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_run_for(rt, 1));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_start(rt)); /* started twice */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_workers(rt, 0));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_once_runs_every_callback_on_the_calling_thread),
        cmocka_unit_test(test_run_for_drives_the_pipeline_to_completion),
        cmocka_unit_test(test_pipeline_wait_in_host_mode_runs_the_work_itself),
        cmocka_unit_test(test_two_host_threads_calling_run_for_act_as_workers),
        cmocka_unit_test(test_run_once_on_a_runtime_with_workers_returns_estate),
    };
    return TU_RUN_GROUP(tests);
}
