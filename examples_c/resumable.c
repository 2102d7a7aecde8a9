/*
 * resumable.c — a paginated import that survives a crash and resumes where it left off.
 *
 * The source is a paginated API (simulated: 50 pages of 20 records; the cursor is the page
 * number). Every record goes through a flaky, rate-limited service (simulated with runtime
 * timers, no thread per call) and is then stored. The service
 *   - answers in 2..12 ms, and fails about 20 % of calls (decided by record id and attempt, so
 *     runs are reproducible),
 *   - hangs on about 2 % of first calls: the stage timeout (30 ms) fails them,
 *   - has an outage of 150 ms when it first sees a record of page 30: every call fails.
 * The pipeline protects it and itself with
 *   - retries with exponential backoff and jitter (failed calls; timeouts are not retried),
 *   - a circuit breaker: 5 failures in a row open it; while open, calls and the source wait,
 *   - a rate limit of 1000 calls/s and at most 32 calls in flight,
 *   - a dead-letter file for what still fails (one line per record),
 *   - a cursor source: fluxus commits the page cursor up to which every record is finished
 *     (stored or dead-lettered), however the calls were reordered; the commit callback writes
 *     it to the state file (a temp file renamed over it, so a kill never leaves half a file),
 *     and a restart resumes from it: no record before it is processed twice, none is lost.
 *
 * Usage: resumable STATE_FILE DEAD_LETTER_FILE [--stop-after N] [--delivered-log FILE]
 *   --stop-after N       simulate a crash: _exit(3) from the sink after N stored records
 *   --delivered-log FILE append the id of every stored record to FILE
 * Run it once with --stop-after, then again without: the second run resumes from the state
 * file. Exit status: 0 when every page is done, 3 after a simulated crash, 1 or 2 on errors.
 */
#define _POSIX_C_SOURCE 200809L

/* This example uses the experimental tier (see "Stability" in fluxus.h). */
#define FLUXUS_EXPERIMENTAL
#include <fluxus.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGES 50u
#define PER_PAGE 20u
#define RECORDS (PAGES * PER_PAGE)
#define RATE_PER_S 1000.0
#define IN_FLIGHT 32u
#define TIMEOUT_US 30000u        /* per call */
#define HANG_US 200000u          /* a hung call answers (too late) after this */
#define OUTAGE_FROM_RECORD 600u  /* the outage starts with the first call for page 30 */
#define OUTAGE_US 150000u
#define MAX_ATTEMPTS 6u
#define SERVICE_DOWN 503         /* the service's error status */

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
    const char *state_path;
    char state_tmp[4096];
    FILE *dead_letters;
    FILE *delivered_log;
    uint64_t stop_after;
    uint64_t start_page;
    uint64_t start_ns;
    uint32_t attempts[RECORDS];     /* calls per record; the service stage calls one at a time */
    uint64_t outage_until;          /* runtime clock; 0 = not started (stage thread only) */
    uint64_t stored;                /* sink only */
    atomic_uint_fast64_t dead, dead_timeouts, late, opens;
    atomic_uint_fast64_t committed; /* last committed page */
    atomic_int state_errors;
} app;

/* One call in progress: what the simulated service's timer needs to answer it. */
typedef struct call {
    app *a;
    uint64_t completion;
    uint64_t record;
    int32_t status;
} call;

static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double seconds(app *a) {
    uint64_t now = 0;
    fluxus_runtime_now_ns(a->rt, &now);
    return (double)(now - a->start_ns) / 1e9;
}

/* ----- the paginated source: a page is 20 record ids; the cursor is the page number ----- */

static int32_t read_page(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                         uint32_t *count, uint64_t *next_cursor) {
    (void)user;
    if (cursor >= PAGES) { /* resumed after the last page: nothing left */
        *count = 0;
        return FLUXUS_PULL_END;
    }
    if (capacity < PER_PAGE) return 1; /* the batch size is set to a page below */
    for (uint32_t i = 0; i < PER_PAGE; i++) items[i] = cursor * PER_PAGE + i;
    *count = PER_PAGE;
    *next_cursor = cursor + 1;
    return cursor + 1 == PAGES ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static uint64_t page_of(void *user, uint64_t record) {
    (void)user;
    return record / PER_PAGE;
}

/* Every record of every page before `cursor` is stored or dead-lettered: save the cursor.
 * Write a temp file, flush it to disk, and rename it over the state file (atomic on POSIX). */
static void commit(void *user, uint64_t cursor) {
    app *a = user;
    FILE *f = fopen(a->state_tmp, "w");
    int ok = f != NULL && fprintf(f, "%" PRIu64 "\n", cursor) > 0 && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    if (f != NULL && fclose(f) != 0) ok = 0;
    if (!ok || rename(a->state_tmp, a->state_path) != 0) {
        atomic_fetch_add(&a->state_errors, 1);
        return;
    }
    uint64_t before = atomic_exchange(&a->committed, cursor);
    if (cursor / 10 != before / 10 || cursor == PAGES)
        printf("[%5.2f s] checkpoint: pages before %" PRIu64 " are done\n", seconds(a), cursor);
}

/* ----- the flaky service ----- */

static void service_answers(void *user) {
    call *c = user;
    int32_t rc = fluxus_pipeline_complete_async(c->a->p, c->completion, c->status, c->record);
    if (rc == FLUXUS_ETIMEDOUT) atomic_fetch_add(&c->a->late, 1); /* it had timed out */
}

static int32_t call_service(void *user, uint64_t record, uint64_t completion) {
    app *a = user;
    uint32_t attempt = ++a->attempts[record];
    uint64_t now = 0, delay_us = 2000 + mix(record * 977 + attempt) % 10000;
    int32_t status = 0;
    fluxus_runtime_now_ns(a->rt, &now);
    if (a->outage_until == 0 && record >= OUTAGE_FROM_RECORD)
        a->outage_until = now + OUTAGE_US * 1000ull;
    if (now < a->outage_until) {
        status = SERVICE_DOWN;
    } else if (attempt == 1 && mix(record ^ 0xC0FFEEull) % 50 == 0) {
        delay_us = HANG_US; /* answers long after the stage timeout */
    } else if (mix(record * 31 + attempt) % 5 == 0) {
        status = SERVICE_DOWN;
    }
    call *c = malloc(sizeof *c);
    if (c == NULL) return FLUXUS_ENOMEM; /* refused: fluxus fails (or retries) the record */
    c->a = a;
    c->completion = completion;
    c->record = record;
    c->status = status;
    int32_t rc = fluxus_runtime_call_after(NULL, a->rt, delay_us * 1000u, service_answers, c, free);
    if (rc != FLUXUS_OK) free(c);
    return rc;
}

static void breaker_changed(void *user, int32_t from, int32_t to) {
    static const char *names[] = {"closed", "open", "half-open"};
    app *a = user;
    if (to == FLUXUS_BREAKER_OPEN) atomic_fetch_add(&a->opens, 1);
    printf("[%5.2f s] circuit breaker: %s -> %s\n", seconds(a), names[from], names[to]);
}

/* ----- where records end ----- */

static int32_t store(void *user, uint64_t record) {
    app *a = user;
    if (a->delivered_log != NULL) {
        fprintf(a->delivered_log, "%" PRIu64 "\n", record);
        fflush(a->delivered_log); /* on disk before the record counts as finished */
    }
    if (++a->stored == a->stop_after) {
        printf("[%5.2f s] simulated crash after %" PRIu64 " stored records (last committed "
               "cursor: %" PRIu64 ")\n",
               seconds(a), a->stored, (uint64_t)atomic_load(&a->committed));
        fflush(stdout);
        _exit(3); /* like a kill: no cleanup, no final commit */
    }
    return 0;
}

static void dead_letter(void *user, uint64_t record, const fluxus_failure *f) {
    app *a = user;
    int32_t status = 0;
    uint32_t attempts = 0;
    fluxus_failure_get_status(&status, f); /* f is never NULL here: these cannot fail */
    fluxus_failure_get_attempts(&attempts, f);
    atomic_fetch_add(&a->dead, 1);
    if (status == FLUXUS_ETIMEDOUT) atomic_fetch_add(&a->dead_timeouts, 1);
    fprintf(a->dead_letters, "%" PRIu64 " page=%" PRIu64 " attempts=%u error=%s\n", record,
            record / PER_PAGE, attempts,
            status == SERVICE_DOWN ? "SERVICE_DOWN" : fluxus_err_name(status));
    fflush(a->dead_letters);
}

/* ----- main ----- */

static void usage(void) {
    fprintf(stderr, "usage: resumable STATE_FILE DEAD_LETTER_FILE [--stop-after N] "
                    "[--delivered-log FILE]\n");
    exit(2);
}

static uint64_t read_state(const char *path) {
    FILE *f = fopen(path, "r");
    unsigned long long cursor = 0;
    if (f == NULL) {
        if (errno != ENOENT) {
            perror(path);
            exit(2);
        }
        printf("no state file %s: starting from page 0\n", path);
        return 0;
    }
    if (fscanf(f, "%llu", &cursor) != 1 || cursor > PAGES) {
        fprintf(stderr, "%s: not a page cursor\n", path);
        exit(2);
    }
    fclose(f);
    printf("resuming from page %llu (state file %s): pages before it are done\n", cursor, path);
    return cursor;
}

int main(int argc, char **argv) {
    static app a; /* zeroed; large (per-record attempt counts) */
    const char *delivered_path = NULL;
    fluxus_circuit_breaker *breaker = NULL;
    fluxus_rate_limiter *limit = NULL;
    uint32_t stage = 0;

    if (argc < 3) usage();
    a.state_path = argv[1];
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--stop-after") == 0 && i + 1 < argc)
            a.stop_after = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--delivered-log") == 0 && i + 1 < argc)
            delivered_path = argv[++i];
        else
            usage();
    }
    snprintf(a.state_tmp, sizeof a.state_tmp, "%s.tmp", a.state_path);
    a.dead_letters = fopen(argv[2], "a");
    if (a.dead_letters == NULL) {
        perror(argv[2]);
        return 2;
    }
    if (delivered_path != NULL && (a.delivered_log = fopen(delivered_path, "a")) == NULL) {
        perror(delivered_path);
        return 2;
    }
    a.start_page = read_state(a.state_path);
    atomic_store(&a.committed, a.start_page);

    CHECK(fluxus_runtime_new(&a.rt));
    CHECK(fluxus_runtime_set_workers(a.rt, 2));
    CHECK(fluxus_pipeline_new(&a.p, a.rt, "import"));
    CHECK(fluxus_pipeline_set_batch_size(a.p, PER_PAGE)); /* one read = one page */
    CHECK(fluxus_pipeline_set_cursor_source(a.p, "pages", a.start_page, read_page, page_of,
                                            commit, &a, NULL));

    CHECK(fluxus_pipeline_add_async_map(&stage, a.p, "service", call_service, &a, NULL));
    a.service_stage = stage;
    CHECK(fluxus_stage_set_order(a.p, stage, FLUXUS_ORDER_UNORDERED));
    CHECK(fluxus_stage_set_in_flight(a.p, stage, IN_FLIGHT));
    CHECK(fluxus_stage_set_timeout_us(a.p, stage, TIMEOUT_US));
    CHECK(fluxus_stage_set_retry(a.p, stage, MAX_ATTEMPTS, FLUXUS_BACKOFF_EXPONENTIAL_JITTER,
                                 5000, 200000));
    CHECK(fluxus_stage_set_error_policy(a.p, stage, FLUXUS_ERROR_DEAD_LETTER));
    CHECK(fluxus_pipeline_set_dead_letter(a.p, dead_letter, &a, NULL));

    CHECK(fluxus_circuit_breaker_new(&breaker, a.rt));
    CHECK(fluxus_circuit_breaker_set_consecutive_failures(breaker, 5));
    CHECK(fluxus_circuit_breaker_set_reset_timeout_us(breaker, 50000));
    CHECK(fluxus_circuit_breaker_set_state_callback(breaker, breaker_changed, &a, NULL));
    CHECK(fluxus_stage_set_circuit_breaker(a.p, stage, breaker, FLUXUS_BREAKER_WAIT));
    CHECK(fluxus_pipeline_set_source_breaker(a.p, breaker)); /* hold the source while open */
    CHECK(fluxus_circuit_breaker_free(breaker));             /* the pipeline keeps it */

    CHECK(fluxus_rate_limiter_new(&limit, a.rt, RATE_PER_S, PER_PAGE));
    CHECK(fluxus_stage_set_rate_limiter(a.p, stage, limit, UINT32_MAX));
    CHECK(fluxus_rate_limiter_free(limit));

    CHECK(fluxus_pipeline_add_sink(NULL, a.p, "store", store, &a, NULL));

    CHECK(fluxus_runtime_now_ns(a.rt, &a.start_ns));
    CHECK(fluxus_pipeline_start(a.p));
    int32_t rc = fluxus_pipeline_wait(a.p, UINT32_MAX);

    fluxus_pipeline_stats s = {0};
    fluxus_stage_stats st = {0};
    uint64_t committed = 0;
    s.struct_size = sizeof s;
    st.struct_size = sizeof st;
    CHECK(fluxus_pipeline_get_stats(&s, a.p));
    CHECK(fluxus_stage_get_stats(&st, a.p, stage));
    int32_t crc = fluxus_pipeline_get_committed_cursor(&committed, a.p);
    printf("run: %s in %.2f s", fluxus_err_name(rc), seconds(&a));
    if (a.start_page < PAGES) printf(", pages %" PRIu64 "..%u", a.start_page, PAGES - 1);
    printf("\n");
    printf("  records %" PRIu64 ": stored %" PRIu64 ", dead-lettered %" PRIu64
           " (%" PRIu64 " timed out, %" PRIu64 " out of attempts)\n",
           s.admitted, s.delivered, s.dead_lettered, (uint64_t)atomic_load(&a.dead_timeouts),
           s.dead_lettered - (uint64_t)atomic_load(&a.dead_timeouts));
    printf("  service calls retried %" PRIu64 " times, breaker opened %" PRIu64
           " times, late answers ignored %" PRIu64 "\n",
           st.retries, (uint64_t)atomic_load(&a.opens), (uint64_t)atomic_load(&a.late));
    printf("  committed cursor: %s%" PRIu64 " of %u\n", crc == FLUXUS_OK ? "" : "(none) ",
           committed, PAGES);

    CHECK(fluxus_pipeline_free(a.p)); /* hung calls' pending timers are dropped with the runtime */
    CHECK(fluxus_runtime_free(a.rt));
    fclose(a.dead_letters);
    if (a.delivered_log != NULL) fclose(a.delivered_log);

    int done = rc == FLUXUS_OK && (crc != FLUXUS_OK ? a.start_page == PAGES : committed == PAGES);
    if (atomic_load(&a.state_errors) != 0) {
        fprintf(stderr, "could not write the state file %s\n", a.state_path);
        done = 0;
    }
    printf("%s\n", done ? "all pages done" : "NOT DONE");
    return done ? 0 : 1;
}
