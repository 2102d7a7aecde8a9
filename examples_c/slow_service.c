/*
 * slow_service.c — calling a slow, flaky service from a pipeline without a thread per call.
 *
 * Each item is a request id. An async stage "calls" a simulated service: the call is a runtime
 * timer of 5..60 ms (a few hang for 400 ms), and the timer completes the item. The service is
 * protected three ways:
 *   - a rate limit of 400 requests/s (a token bucket shared through a fluxus_rate_limiter),
 *   - at most 24 requests in flight (the async stage's in-flight limit),
 *   - a timeout of 100 ms per request: hung calls fail with FLUXUS_ETIMEDOUT and go to the
 *     dead-letter callback; their late completion is refused, and the caller keeps its item.
 * A timer prints a live progress line every 100 ms; at the end the program prints the stats
 * and checks that every request is accounted for.
 */
#include <fluxus.h>

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define REQUESTS 800u
#define RATE_PER_S 400.0
#define IN_FLIGHT 24u
#define TIMEOUT_US 100000u

#define CHECK(call)                                                                 \
    do {                                                                            \
        int32_t rc_ = (call);                                                       \
        if (rc_ != FLUXUS_OK) {                                                     \
            fprintf(stderr, "%s failed: %s (%s) %s\n", #call, fluxus_err_name(rc_), \
                    fluxus_strerror(rc_), fluxus_last_error_message());             \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

typedef struct app {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t service_stage;
    uint64_t next_request;      /* the source's cursor (one caller at a time) */
    atomic_uint_fast64_t late;  /* completions refused because the request had timed out */
    atomic_uint_fast64_t timed_out_seen;
    uint64_t delivered;         /* written by the sink only */
    uint64_t start_ns;
    atomic_int done;
} app;

/* One call in progress: what the simulated service's timer needs to complete it. */
typedef struct call {
    app *a;
    uint64_t completion;
    uint64_t request;
} call;

/* Deterministic "latency" of a request: mostly 5..60 ms, every 97th one hangs for 400 ms. */
static uint64_t latency_us(uint64_t request) {
    uint64_t z = request * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    if (request % 97 == 13) return 400000;
    return 5000 + (z >> 40) % 55000;
}

static int32_t next_request(void *user, uint64_t *item) {
    app *a = user;
    if (a->next_request == REQUESTS) return FLUXUS_PULL_END;
    *item = a->next_request++;
    return FLUXUS_PULL_ITEM;
}

/* The service answers: complete the item (the response is the request id times 10). The call
 * record is freed by the timer's user_free, also when a pending timer is dropped at exit. */
static void service_answers(void *user) {
    call *c = user;
    int32_t rc = fluxus_pipeline_complete_async(c->a->p, c->completion, 0, c->request * 10);
    if (rc == FLUXUS_ETIMEDOUT) atomic_fetch_add(&c->a->late, 1); /* we keep the item: an int */
}

/* Async stage: start the call and return at once. */
static int32_t call_service(void *user, uint64_t request, uint64_t completion) {
    app *a = user;
    call *c = malloc(sizeof *c);
    if (!c) return FLUXUS_ENOMEM; /* refused: fluxus fails the item */
    c->a = a;
    c->completion = completion;
    c->request = request;
    int32_t rc = fluxus_runtime_call_after(NULL, a->rt, latency_us(request) * 1000u,
                                           service_answers, c, free);
    if (rc != FLUXUS_OK) free(c);
    return rc;
}

static int32_t store_response(void *user, uint64_t response) {
    app *a = user;
    (void)response;
    a->delivered++;
    return 0;
}

static void dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    app *a = user;
    int32_t status = 0;
    (void)item;
    fluxus_failure_get_status(&status, f);
    if (status == FLUXUS_ETIMEDOUT) atomic_fetch_add(&a->timed_out_seen, 1);
}

/* Progress line, every 100 ms until the pipeline is done (a timer that re-arms itself). */
static void progress(void *user) {
    app *a = user;
    fluxus_pipeline_stats s = {0};
    fluxus_stage_stats st = {0};
    uint64_t now = 0;
    s.struct_size = sizeof s;
    st.struct_size = sizeof st;
    fluxus_pipeline_get_stats(&s, a->p);
    fluxus_stage_get_stats(&st, a->p, a->service_stage);
    fluxus_runtime_now_ns(a->rt, &now);
    double secs = (double)(now - a->start_ns) / 1e9;
    uint64_t done = s.delivered + s.failed + s.dead_lettered;
    printf("\r%5.2f s  done %4" PRIu64 "/%u  in flight %2" PRIu64 "  timed out %2" PRIu64
           "  calls %5.0f/s ",
           secs, done, REQUESTS, st.in_flight, st.timed_out,
           secs > 0 ? (double)(done + st.in_flight) / secs : 0.0);
    fflush(stdout);
    if (!atomic_load(&a->done))
        fluxus_runtime_call_after(NULL, a->rt, 100000000u, progress, a, NULL);
}

int main(void) {
    app a = {0};
    fluxus_rate_limiter *limit = NULL;

    CHECK(fluxus_runtime_new(&a.rt));
    CHECK(fluxus_runtime_set_workers(a.rt, 1)); /* waiting costs no thread: one is plenty */
    CHECK(fluxus_pipeline_new(&a.p, a.rt, "slow-service"));
    CHECK(fluxus_pipeline_set_pull_source(a.p, "requests", next_request, &a, NULL));
    CHECK(fluxus_pipeline_add_async_map(&a.service_stage, a.p, "service", call_service, &a, NULL));
    CHECK(fluxus_stage_set_order(a.p, a.service_stage, FLUXUS_ORDER_UNORDERED));
    CHECK(fluxus_stage_set_in_flight(a.p, a.service_stage, IN_FLIGHT));
    CHECK(fluxus_stage_set_timeout_us(a.p, a.service_stage, TIMEOUT_US));
    CHECK(fluxus_stage_set_error_policy(a.p, a.service_stage, FLUXUS_ERROR_DEAD_LETTER));
    CHECK(fluxus_pipeline_set_dead_letter(a.p, dead_letter, &a, NULL));
    CHECK(fluxus_rate_limiter_new(&limit, a.rt, RATE_PER_S, 1));
    CHECK(fluxus_stage_set_rate_limiter(a.p, a.service_stage, limit, UINT32_MAX));
    CHECK(fluxus_rate_limiter_free(limit)); /* the stage keeps its own reference */
    CHECK(fluxus_pipeline_add_sink(NULL, a.p, "store", store_response, &a, NULL));

    CHECK(fluxus_runtime_now_ns(a.rt, &a.start_ns));
    CHECK(fluxus_pipeline_start(a.p));
    CHECK(fluxus_runtime_call_after(NULL, a.rt, 100000000u, progress, &a, NULL));
    CHECK(fluxus_pipeline_wait(a.p, UINT32_MAX));
    atomic_store(&a.done, 1);
    progress(&a);
    printf("\n");

    fluxus_pipeline_stats s = {0};
    fluxus_stage_stats st = {0};
    uint64_t end = 0;
    s.struct_size = sizeof s;
    st.struct_size = sizeof st;
    CHECK(fluxus_pipeline_get_stats(&s, a.p));
    CHECK(fluxus_stage_get_stats(&st, a.p, a.service_stage));
    CHECK(fluxus_runtime_now_ns(a.rt, &end));
    double secs = (double)(end - a.start_ns) / 1e9;
    printf("requests %" PRIu64 ": delivered %" PRIu64 ", timed out %" PRIu64
           " (dead-lettered %" PRIu64 "), late answers refused so far %" PRIu64 "\n",
           s.admitted, s.delivered, st.timed_out, s.dead_lettered,
           (uint64_t)atomic_load(&a.late));
    printf("took %.2f s: %.0f requests/s against a limit of %.0f/s\n", secs,
           (double)s.admitted / secs, RATE_PER_S);

    /* Hung calls still answer later; freeing the runtime drops their pending timers. */
    CHECK(fluxus_pipeline_free(a.p));
    CHECK(fluxus_runtime_free(a.rt));
    int ok = s.balanced && s.admitted == REQUESTS && s.delivered == a.delivered &&
             s.dead_lettered == atomic_load(&a.timed_out_seen) &&
             s.delivered + s.dead_lettered == REQUESTS;
    printf("%s\n", ok ? "every request accounted for" : "ACCOUNTING MISMATCH");
    return ok ? 0 : 1;
}
