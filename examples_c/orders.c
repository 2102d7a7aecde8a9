/*
 * orders.c — a branching pipeline built from a textual spec: order events are parsed (bad
 * records go down an error branch to a quarantine), resent duplicates are dropped, and a router
 * sends each event by type: payments get their customer from a dataloader (one lookup per
 * distinct customer per group, with a cache) and are scored; refunds are validated (failures
 * are dead-lettered) and merge with the payments into one store; page views are broadcast to a
 * live counter and to an archive that writes them 100 at a time. At the end it prints every
 * stage's counters and checks that each event ended exactly once.
 *
 * Items are pointers to heap records. Three kinds travel: events, customers (the loader's
 * results) and archive files (the batch stage's outputs), so each starts with a tag and the
 * one item destructor frees any of them.
 *
 *   usage: orders [EVENTS]      (default 200000)
 */
/* This example uses the experimental tier (see "Stability" in fluxus.h). */
#define FLUXUS_EXPERIMENTAL
#include <fluxus.h>

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                 \
    do {                                                                            \
        int32_t rc_ = (call);                                                       \
        if (rc_ != FLUXUS_OK) {                                                     \
            fprintf(stderr, "%s failed: %s (%s) %s\n", #call, fluxus_err_name(rc_), \
                    fluxus_strerror(rc_), fluxus_last_error_message());             \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

static const char *const SPEC =
    "# order events, from the raw text to their stores\n"
    "source(events)\n"
    "  | map(parse, workers=2, order=unordered) { error: sink(quarantine) }\n"
    "  | dedup(key=event_id, last=4096)\n"
    "  | router(by_type, default=other) {\n"
    "      payment: loader(customers, attach=with_customer, key=customer_id,\n"
    "                      size=64, linger_us=2000, cache=4096)\n"
    "               | map(score) | sink_batch(store) as store\n"
    "      refund:  map(validate, on_error=dead_letter) | @store\n"
    "      view:    broadcast(copy=copy_event) {\n"
    "                 live:    sink(count_view)\n"
    "                 archive: batch(archive, size=100, linger_us=5000) | sink(archived)\n"
    "               }\n"
    "      other:   sink(ignore)\n"
    "    }\n";

/* ----- items ----- */

enum tag { TAG_EVENT = 1, TAG_CUSTOMER, TAG_ARCHIVE };

struct event {
    int tag;
    char raw[48];     /* "id type customer cents", as read */
    uint64_t id;
    char type[12];
    uint32_t customer;
    int64_t cents;
    int tier;         /* from the customer lookup */
    int flagged;      /* set by the scorer */
};

struct customer {
    int tag;
    uint32_t id;
    int tier;
};

struct archive_file {
    int tag;
    uint32_t rows;
};

static atomic_uint_fast64_t freed_events, freed_customers, freed_archives;

static void free_item(void *user, uint64_t item) {
    int *tag = (int *)(uintptr_t)item;
    (void)user;
    if (*tag == TAG_EVENT) atomic_fetch_add(&freed_events, 1);
    if (*tag == TAG_CUSTOMER) atomic_fetch_add(&freed_customers, 1);
    if (*tag == TAG_ARCHIVE) atomic_fetch_add(&freed_archives, 1);
    free(tag);
}

/* ----- the source: synthetic raw records ----- */

struct source_state {
    uint64_t next, total;
    uint64_t malformed, resent;  /* what it made, to check the ends against */
};

static int32_t read_event(void *user, uint64_t *item) {
    static const char *const types[] = {"payment", "payment", "refund", "view", "view", "promo"};
    struct source_state *s = user;
    struct event *e;
    uint64_t i, id;
    if (s->next == s->total) return FLUXUS_PULL_END;
    i = s->next++;
    e = calloc(1, sizeof *e);
    if (!e) return FLUXUS_ESOURCE;
    e->tag = TAG_EVENT;
    /* Every 97th record is garbage; every 50th is a resend of the (good) one before it. */
    int bad = i % 97 == 13, resend = i % 50 == 49 && !bad && (i - 1) % 97 != 13;
    id = resend ? i - 1 : i;
    s->resent += (uint64_t)resend;
    if (bad) {
        snprintf(e->raw, sizeof e->raw, "#corrupted#%" PRIu64, i);
        s->malformed++;
    } else {
        snprintf(e->raw, sizeof e->raw, "%" PRIu64 " %s %u %" PRId64, id, types[id % 6],
                 (unsigned)(id * 7919 % 2000), (int64_t)(id % 1000) * 100 + 1);
    }
    *item = (uint64_t)(uintptr_t)e;
    return FLUXUS_PULL_ITEM;
}

/* ----- stage callbacks ----- */

static int32_t parse(void *user, uint64_t in, uint64_t *out) {
    struct event *e = (struct event *)(uintptr_t)in;
    (void)user;
    if (sscanf(e->raw, "%" SCNu64 " %11s %u %" SCNd64, &e->id, e->type, &e->customer,
               &e->cents) != 4)
        return 22; /* malformed: down the error branch */
    *out = in;
    return 0;
}

static int32_t event_id(void *user, uint64_t item, const void **key, size_t *len) {
    struct event *e = (struct event *)(uintptr_t)item;
    (void)user;
    *key = &e->id;
    *len = sizeof e->id;
    return 0;
}

static int32_t customer_id(void *user, uint64_t item, const void **key, size_t *len) {
    struct event *e = (struct event *)(uintptr_t)item;
    (void)user;
    *key = &e->customer;
    *len = sizeof e->customer;
    return 0;
}

static int32_t by_type(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                       uint32_t *count) {
    const struct event *e = (const struct event *)(uintptr_t)item;
    (void)user;
    (void)capacity;
    if (strcmp(e->type, "payment") == 0) routes[0] = 0;
    else if (strcmp(e->type, "refund") == 0) routes[0] = 1;
    else if (strcmp(e->type, "view") == 0) routes[0] = 2;
    else return 0; /* no route: the default route, "other" */
    *count = 1;
    return 0;
}

static atomic_uint_fast64_t lookups, lookup_calls;

/* The loader's batch lookup: one call per group for its distinct customers. */
static int32_t customers(void *user, const uint64_t *items, uint32_t count, uint64_t *results,
                         int32_t *status) {
    (void)user;
    atomic_fetch_add(&lookup_calls, 1);
    atomic_fetch_add(&lookups, count);
    for (uint32_t i = 0; i < count; i++) {
        const struct event *e = (const struct event *)(uintptr_t)items[i];
        struct customer *c = malloc(sizeof *c);
        if (!c) {
            status[i] = 12;
            continue;
        }
        c->tag = TAG_CUSTOMER;
        c->id = e->customer;
        c->tier = (int)(e->customer % 3);
        results[i] = (uint64_t)(uintptr_t)c;
    }
    return 0;
}

static int32_t with_customer(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    struct event *e = (struct event *)(uintptr_t)item;
    const struct customer *c = (const struct customer *)(uintptr_t)result;
    (void)user;
    e->tier = c->tier; /* the customer is borrowed: copy what we keep */
    *out = item;
    return 0;
}

static int32_t score(void *user, uint64_t in, uint64_t *out) {
    struct event *e = (struct event *)(uintptr_t)in;
    (void)user;
    e->flagged = e->cents > 90000 && e->tier == 0;
    *out = in;
    return 0;
}

static int32_t validate(void *user, uint64_t in, uint64_t *out) {
    const struct event *e = (const struct event *)(uintptr_t)in;
    (void)user;
    if (e->cents > 95000) return 34; /* refunds this large need a human */
    *out = in;
    return 0;
}

static int32_t copy_event(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    struct event *c = malloc(sizeof *c);
    (void)user;
    (void)route;
    if (!c) return 12;
    memcpy(c, (const void *)(uintptr_t)item, sizeof *c);
    *copy = (uint64_t)(uintptr_t)c;
    return 0;
}

/* Counters the sinks keep (each sink runs on one worker; main reads them after the wait). */
struct tally {
    uint64_t stored, flagged, quarantined, views, archived_rows, archive_files, ignored,
        dead_lettered;
};

static int32_t store(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    struct tally *t = user;
    (void)status;
    for (uint32_t i = 0; i < count; i++) {
        struct event *e = (struct event *)(uintptr_t)items[i];
        t->stored++;
        t->flagged += (uint64_t)e->flagged;
        free(e); /* delivered: the sink owns it */
    }
    return 0;
}

static int32_t quarantine(void *user, uint64_t item) {
    struct tally *t = user;
    t->quarantined++;
    free((void *)(uintptr_t)item);
    return 0;
}

static int32_t count_view(void *user, uint64_t item) {
    struct tally *t = user;
    t->views++;
    free((void *)(uintptr_t)item);
    return 0;
}

/* The archive writes a group of up to 100 views as one file; the views are consumed. */
static int32_t archive(void *user, const uint64_t *items, uint32_t count, fluxus_emitter *em) {
    struct archive_file *f = malloc(sizeof *f);
    (void)user;
    (void)items;
    if (!f) return 12;
    f->tag = TAG_ARCHIVE;
    f->rows = count;
    return fluxus_emitter_emit(em, (uint64_t)(uintptr_t)f);
}

static int32_t archived(void *user, uint64_t item) {
    struct tally *t = user;
    struct archive_file *f = (struct archive_file *)(uintptr_t)item;
    t->archive_files++;
    t->archived_rows += f->rows;
    free(f);
    return 0;
}

static int32_t ignore(void *user, uint64_t item) {
    struct tally *t = user;
    t->ignored++;
    free((void *)(uintptr_t)item);
    return 0;
}

static void dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    struct tally *t = user;
    (void)item;
    (void)f;
    t->dead_lettered++; /* the item destructor frees it afterwards */
}

#define REG(name, kind, fn, user) \
    CHECK(fluxus_registry_add(reg, name, kind, (fluxus_any_fn)(fn), user, NULL))

int main(int argc, char **argv) {
    struct source_state src = {0, argc > 1 ? strtoull(argv[1], NULL, 10) : 200000, 0, 0};
    struct tally t;
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    fluxus_registry *reg;
    fluxus_pipeline_stats s;
    uint32_t n, i;
    int ok = 1;

    memset(&t, 0, sizeof t);
    CHECK(fluxus_runtime_new(&rt));
    CHECK(fluxus_pipeline_new(&p, rt, "orders"));
    CHECK(fluxus_pipeline_set_item_free(p, free_item, NULL, NULL));
    CHECK(fluxus_pipeline_set_dead_letter(p, dead_letter, &t, NULL));

    CHECK(fluxus_registry_new(&reg));
    REG("events", FLUXUS_FN_PULL, read_event, &src);
    REG("parse", FLUXUS_FN_MAP, parse, NULL);
    REG("event_id", FLUXUS_FN_KEY, event_id, NULL);
    REG("by_type", FLUXUS_FN_ROUTE, by_type, NULL);
    REG("customer_id", FLUXUS_FN_KEY, customer_id, NULL);
    REG("customers", FLUXUS_FN_LOAD, customers, NULL);
    REG("with_customer", FLUXUS_FN_ATTACH, with_customer, NULL);
    REG("score", FLUXUS_FN_MAP, score, NULL);
    REG("validate", FLUXUS_FN_MAP, validate, NULL);
    REG("copy_event", FLUXUS_FN_COPY, copy_event, NULL);
    REG("store", FLUXUS_FN_SINK_BATCH, store, &t);
    REG("quarantine", FLUXUS_FN_SINK, quarantine, &t);
    REG("count_view", FLUXUS_FN_SINK, count_view, &t);
    REG("archive", FLUXUS_FN_FLAT_MAP_BATCH, archive, NULL);
    REG("archived", FLUXUS_FN_SINK, archived, &t);
    REG("ignore", FLUXUS_FN_SINK, ignore, &t);
    printf("spec:\n%s\n", SPEC);
    CHECK(fluxus_pipeline_build(p, reg, SPEC));
    CHECK(fluxus_registry_free(reg)); /* the pipeline keeps what it needs */

    CHECK(fluxus_pipeline_start(p));
    CHECK(fluxus_pipeline_wait(p, UINT32_MAX));

    CHECK(fluxus_pipeline_get_stage_count(&n, p));
    printf("%-12s %9s %9s %9s %9s %9s %9s %9s\n", "stage", "in", "out", "spawned", "filtered",
           "failed", "dead", "routed");
    for (i = 0; i < n; i++) {
        fluxus_stage_stats st;
        const char *name;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        CHECK(fluxus_stage_get_stats(&st, p, i));
        CHECK(fluxus_stage_get_name(&name, p, i));
        printf("%-12s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64
               " %9" PRIu64 " %9" PRIu64 "\n",
               name, st.in, st.out, st.spawned, st.filtered, st.failed,
               st.dead_lettered, st.routed);
        if (st.in + st.spawned != st.out + st.filtered + st.failed + st.dead_lettered +
                                      st.cancelled + st.routed) {
            printf("  stage '%s' does not balance\n", name);
            ok = 0;
        }
        if (strcmp(name, "customers") == 0)
            printf("  (loader: %" PRIu64 " cache hits, %" PRIu64 " lookups in %" PRIu64
                   " calls)\n",
                   st.cache_hits, (uint64_t)atomic_load(&lookups),
                   (uint64_t)atomic_load(&lookup_calls));
    }
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    CHECK(fluxus_pipeline_get_stats(&s, p));
    printf("\npipeline: admitted %" PRIu64 " (events %" PRIu64 " + copies and archive files), "
           "delivered %" PRIu64 ", filtered %" PRIu64 ", failed %" PRIu64
           ", dead-lettered %" PRIu64 ", balanced %d\n",
           s.admitted, src.total, s.delivered, s.filtered, s.failed, s.dead_lettered,
           s.balanced);
    printf("stored %" PRIu64 " (%" PRIu64 " flagged), quarantined %" PRIu64 ", views %" PRIu64
           ", archived %" PRIu64 " views in %" PRIu64 " files, ignored %" PRIu64
           ", dead-lettered refunds %" PRIu64 "\n",
           t.stored, t.flagged, t.quarantined, t.views, t.archived_rows, t.archive_files,
           t.ignored, t.dead_lettered);

    /* Every event ended exactly once: stored, quarantined, viewed (its copy archived), ignored,
     * dead-lettered, or dropped as a resend. */
    {
        uint64_t ended = t.stored + t.quarantined + t.views + t.ignored + t.dead_lettered +
                         src.resent;
        ok &= s.balanced == 1;
        ok &= t.quarantined == src.malformed;
        ok &= t.archived_rows == t.views;
        ok &= ended == src.total;
        if (ended != src.total)
            printf("events ended %" PRIu64 " != %" PRIu64 " read\n", ended, src.total);
    }
    CHECK(fluxus_pipeline_free(p));
    CHECK(fluxus_runtime_free(rt));
    printf("%s\n", ok ? "every event accounted for" : "ACCOUNTING MISMATCH");
    return ok ? 0 : 1;
}
