/*
 * quickstart.c — the flagship fluxus example: a pull source feeds a parallel map, a filter, a
 * dedup stage and a sink, and the program prints what happened and the stats.
 *
 * The items are plain integers (sensor readings), so no item destructor is needed. All the state
 * the callbacks touch lives in this file; the sink writes it on one worker and main() reads it
 * only after fluxus_pipeline_wait() has returned.
 */
#include <fluxus.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define READINGS 200000u /* how many readings the source produces */
#define SENSORS 1000u    /* readings repeat with this period, so dedup has work to do */

/* Stop with a message if a fluxus call fails. */
#define CHECK(call)                                                                 \
    do {                                                                            \
        int32_t rc_ = (call);                                                       \
        if (rc_ != FLUXUS_OK) {                                                     \
            fprintf(stderr, "%s failed: %s (%s) %s\n", #call, fluxus_err_name(rc_), \
                    fluxus_strerror(rc_), fluxus_last_error_message());             \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

/* Source: reading i is the value i % SENSORS. Never called concurrently with itself. */
static int32_t read_sensor(void *user, uint64_t *item) {
    uint64_t *next = user;
    if (*next == READINGS) {
        return FLUXUS_PULL_END;
    }
    *item = *next % SENSORS;
    *next += 1;
    return FLUXUS_PULL_ITEM;
}

/* Map (runs on several workers at once): scale a raw reading. */
static int32_t calibrate(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in * 3;
    return 0;
}

/* Filter: keep even values. */
static int32_t keep_even(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    *keep = (item % 2 == 0);
    return 0;
}

/* Sink: add up what arrives. A single-worker sink never runs concurrently with itself. */
struct totals {
    uint64_t count;
    uint64_t sum;
};

static int32_t store(void *user, uint64_t item) {
    struct totals *t = user;
    t->count += 1;
    t->sum += item;
    return 0;
}

static void print_stats(fluxus_pipeline *p) {
    fluxus_pipeline_stats ps = {.struct_size = sizeof ps};
    CHECK(fluxus_pipeline_get_stats(&ps, p));
    printf("\npipeline: admitted %" PRIu64 " = delivered %" PRIu64 " + filtered %" PRIu64
           " + failed %" PRIu64 " + dead-lettered %" PRIu64 " + cancelled %" PRIu64
           " (balanced: %s)\n",
           ps.admitted, ps.delivered, ps.filtered, ps.failed, ps.dead_lettered, ps.cancelled,
           ps.balanced ? "yes" : "NO");

    uint32_t n = 0;
    CHECK(fluxus_pipeline_get_stage_count(&n, p));
    printf("\n%-10s %7s %9s %9s %9s %6s %11s %9s\n", "stage", "workers", "in", "out", "filtered",
           "failed", "queue peak", "busy ms");
    for (uint32_t i = 0; i < n; i++) {
        fluxus_stage_stats s = {.struct_size = sizeof s};
        CHECK(fluxus_stage_get_stats(&s, p, i));
        const char *name;
        CHECK(fluxus_stage_get_name(&name, p, i));
        char queue[32];
        if (s.queue_capacity == 0) {
            snprintf(queue, sizeof queue, "fused");
        } else {
            snprintf(queue, sizeof queue, "%" PRIu64 "/%" PRIu64, s.queue_peak, s.queue_capacity);
        }
        printf("%-10s %7" PRIu32 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %6" PRIu64
               " %11s %9.2f\n",
               name, s.workers, s.in, s.out, s.filtered, s.failed, queue,
               (double)s.busy_ns / 1e6);
    }
}

int main(void) {
    printf("fluxus %s quickstart\n", fluxus_version());

    fluxus_runtime *rt = NULL;
    CHECK(fluxus_runtime_new(&rt));
    CHECK(fluxus_runtime_set_workers(rt, 2));

    fluxus_pipeline *p = NULL;
    CHECK(fluxus_pipeline_new(&p, rt, "quickstart"));

    uint64_t next = 0;
    struct totals totals = {0, 0};
    uint32_t map_stage = 0;
    CHECK(fluxus_pipeline_set_pull_source(p, "sensors", read_sensor, &next, NULL));
    CHECK(fluxus_pipeline_add_map(&map_stage, p, "calibrate", calibrate, NULL, NULL));
    CHECK(fluxus_stage_set_workers(p, map_stage, 4)); /* ordered by default */
    CHECK(fluxus_pipeline_add_filter(NULL, p, "even", keep_even, NULL, NULL));
    CHECK(fluxus_pipeline_add_dedup(NULL, p, "dedup"));
    CHECK(fluxus_pipeline_add_sink(NULL, p, "store", store, &totals, NULL));

    printf("pipeline: sensors -> calibrate (x3, 4 workers) -> even -> dedup -> store\n");
    CHECK(fluxus_pipeline_start(p));
    CHECK(fluxus_pipeline_wait(p, UINT32_MAX));

    /* Readings cycle through 0..SENSORS-1; x3 keeps parity, so the distinct even values are
     * 3*v for even v, and their sum is 3 * (0 + 2 + ... + (SENSORS-2)). */
    uint64_t want_count = SENSORS / 2;
    uint64_t want_sum = 3 * (uint64_t)(SENSORS / 2) * (SENSORS - 2) / 2;
    printf("read %u readings, stored %" PRIu64 " distinct even values, sum %" PRIu64 "\n", READINGS,
           totals.count, totals.sum);
    print_stats(p);

    fluxus_pipeline_stats ps = {.struct_size = sizeof ps};
    CHECK(fluxus_pipeline_get_stats(&ps, p));
    int ok = totals.count == want_count && totals.sum == want_sum && ps.balanced &&
             ps.admitted == READINGS && ps.delivered == want_count;

    CHECK(fluxus_pipeline_free(p));
    CHECK(fluxus_runtime_free(rt));

    if (!ok) {
        fprintf(stderr, "\nunexpected result: want %" PRIu64 " values with sum %" PRIu64 "\n",
                want_count, want_sum);
        return 1;
    }
    printf("\nok\n");
    return 0;
}
