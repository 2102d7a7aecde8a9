/*
 * The threads a runtime creates: the start hook runs first on each of them and the stop hook
 * last, with the documented kinds, indexes and names; callbacks run on those threads; and none of
 * them takes the host's asynchronous signals (a SIGUSR1 sent to the process while every host
 * thread blocks it stays pending instead of running its handler on a fluxus thread).
 */
#include "test_util.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 16

typedef struct hooks_seen {
    pthread_mutex_t mu;
    uint32_t starts, stops;
    int32_t kinds[MAX_THREADS];
    uint32_t indexes[MAX_THREADS];
    char names[MAX_THREADS][16];
    pthread_t threads[MAX_THREADS];
    uint32_t stop_on_own_thread; /* stops that ran on a thread whose start was seen */
    uint32_t user_frees;
} hooks_seen;

static int same_thread_seen(hooks_seen *h, pthread_t t) {
    uint32_t i;
    for (i = 0; i < h->starts && i < MAX_THREADS; i++)
        if (pthread_equal(h->threads[i], t)) return 1;
    return 0;
}

static void on_start(void *user, int32_t kind, uint32_t index, const char *name) {
    hooks_seen *h = (hooks_seen *)user;
    pthread_mutex_lock(&h->mu);
    if (h->starts < MAX_THREADS) {
        h->kinds[h->starts] = kind;
        h->indexes[h->starts] = index;
        snprintf(h->names[h->starts], sizeof h->names[0], "%s", name);
        h->threads[h->starts] = pthread_self();
    }
    h->starts++;
    pthread_mutex_unlock(&h->mu);
}

static void on_stop(void *user, int32_t kind, uint32_t index) {
    hooks_seen *h = (hooks_seen *)user;
    (void)kind;
    (void)index;
    pthread_mutex_lock(&h->mu);
    h->stops++;
    if (same_thread_seen(h, pthread_self())) h->stop_on_own_thread++;
    pthread_mutex_unlock(&h->mu);
}

static void hooks_free(void *user) {
    TU_ADD(&((hooks_seen *)user)->user_frees, 1);
}

/* The map records whether it ran on a thread whose start hook ran. */
typedef struct map_seen {
    hooks_seen *h;
    uint64_t calls, on_hooked_thread;
} map_seen;

static int32_t recording_map(void *user, uint64_t in, uint64_t *out) {
    map_seen *m = (map_seen *)user;
    int seen;
    pthread_mutex_lock(&m->h->mu);
    seen = same_thread_seen(m->h, pthread_self());
    pthread_mutex_unlock(&m->h->mu);
    TU_ADD(&m->calls, 1);
    if (seen) TU_ADD(&m->on_hooked_thread, 1);
    *out = in;
    return 0;
}

static int32_t count_sink(void *user, uint64_t item) {
    (void)item;
    if (user) TU_ADD((uint64_t *)user, 1);
    return 0;
}

static void test_hooks_run_first_and_last_on_every_thread_the_runtime_creates(void **state) {
    hooks_seen h;
    map_seen m;
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    tu_range_source src = {0, 2000, 0};
    uint32_t i, loops = 0, workers = 0, stage = 0;
    (void)state;
    memset(&h, 0, sizeof h);
    pthread_mutex_init(&h.mu, NULL);
    m.h = &h;
    m.calls = m.on_hooked_thread = 0;
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 3));
    TU_OK(fluxus_runtime_set_thread_hooks(rt, on_start, on_stop, &h, hooks_free));
    TU_OK(fluxus_pipeline_new(&p, rt, "hooked"));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&stage, p, "m", recording_map, &m, NULL));
    TU_OK(fluxus_stage_set_workers(p, stage, 3));
    TU_OK(fluxus_stage_set_order(p, stage, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", count_sink, NULL, NULL));
    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_thread_hooks(rt, on_start, on_stop, &h, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    assert_int_equal(m.calls, 2000);
    /* Every map call ran on a thread the start hook had seen first. */
    assert_int_equal(m.on_hooked_thread, 2000);
    TU_OK(fluxus_pipeline_free(p));
    /* Each thread runs its start hook when it is first scheduled: wait for the last one. */
    {
        uint64_t t0 = tu_now_ms();
        uint32_t starts = 0;
        do {
            pthread_mutex_lock(&h.mu);
            starts = h.starts;
            pthread_mutex_unlock(&h.mu);
            if (starts < 4) tu_sleep_us(1000);
        } while (starts < 4 && tu_now_ms() - t0 < TU_WAIT_MS);
    }
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.starts, 4); /* the loop thread and 3 workers */
    for (i = 0; i < h.starts; i++) {
        assert_false(pthread_equal(h.threads[i], pthread_self()));
        if (h.kinds[i] == FLUXUS_THREAD_LOOP) {
            loops++;
            assert_string_equal(h.names[i], "fluxus-loop");
        } else {
            char want[16];
            assert_int_equal(h.kinds[i], FLUXUS_THREAD_WORKER);
            assert_true(h.indexes[i] < 3);
            snprintf(want, sizeof want, "fluxus-w%u", h.indexes[i]);
            assert_string_equal(h.names[i], want);
            workers++;
        }
    }
    pthread_mutex_unlock(&h.mu);
    assert_int_equal(loops, 1);
    assert_int_equal(workers, 3);
    TU_OK(fluxus_runtime_free(rt));
    /* Every thread ran its stop hook, on itself, by the time the runtime was freed. */
    assert_int_equal(h.stops, 4);
    assert_int_equal(h.stop_on_own_thread, 4);
    assert_int_equal(TU_LOAD(&h.user_frees), 1);
    pthread_mutex_destroy(&h.mu);
}

static void test_a_host_driven_runtime_creates_no_thread_and_calls_no_hook(void **state) {
    hooks_seen h;
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    tu_range_source src = {0, 100, 0};
    (void)state;
    memset(&h, 0, sizeof h);
    pthread_mutex_init(&h.mu, NULL);
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 0));
    TU_OK(fluxus_runtime_set_thread_hooks(rt, on_start, on_stop, &h, hooks_free));
    TU_OK(fluxus_pipeline_new(&p, rt, "host"));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", count_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    while (fluxus_pipeline_wait(p, 0) == FLUXUS_ETIMEDOUT) TU_OK(fluxus_runtime_run_for(rt, 10));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(h.starts, 0);
    assert_int_equal(h.stops, 0);
    assert_int_equal(TU_LOAD(&h.user_frees), 1);
    pthread_mutex_destroy(&h.mu);
}

/* ----- signals ----- */

static volatile sig_atomic_t g_signals;
static pthread_t g_signal_thread;

static void on_usr1(int sig) {
    (void)sig;
    g_signal_thread = pthread_self();
    g_signals++;
}

/* Keeps the workers busy in callbacks while the signal is pending. */
static int32_t busy_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    tu_sleep_us(200);
    *out = in;
    return 0;
}

static void test_fluxus_threads_never_take_the_hosts_asynchronous_signals(void **state) {
    struct sigaction sa, old;
    sigset_t usr1, saved;
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    tu_range_source src = {0, 1500, 0};
    uint32_t stage = 0;
    uint64_t t0;
    (void)state;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
    g_signals = 0;
    /* The runtime's threads are created while this thread does not block SIGUSR1: a thread
     * that inherited this thread's mask would take the signal. */
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 2));
    TU_OK(fluxus_pipeline_new(&p, rt, "signals"));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&stage, p, "busy", busy_map, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, stage, 2));
    TU_OK(fluxus_stage_set_order(p, stage, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", count_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    /* Now the only host thread blocks it, and the process is sent one. */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &usr1, &saved), 0);
    assert_int_equal(kill(getpid(), SIGUSR1), 0);
    t0 = tu_now_ms();
    while (tu_now_ms() - t0 < 200) tu_sleep_us(1000);
    /* No fluxus thread took it: it is still pending. */
    assert_int_equal(g_signals, 0);
    /* Unblocked, it runs its handler here. */
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &saved, NULL), 0);
    assert_int_equal(g_signals, 1);
    assert_true(pthread_equal(g_signal_thread, pthread_self()));
    TU_OK(tu_wait(p));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hooks_run_first_and_last_on_every_thread_the_runtime_creates),
        cmocka_unit_test(test_a_host_driven_runtime_creates_no_thread_and_calls_no_hook),
        cmocka_unit_test(test_fluxus_threads_never_take_the_hosts_asynchronous_signals),
    };
    return TU_RUN_GROUP(tests);
}
