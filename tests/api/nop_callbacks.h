/*
 * No-op callbacks of every callback type in fluxus.h, for tests that register callbacks only to
 * exercise the registration (and that never run them, or run them as pass-throughs): a map
 * passes its item on, a filter keeps it, a sink takes it, sources end at once. Tests whose
 * callbacks must do something else define their own under another name.
 */
#ifndef FLUXUS_TEST_NOP_CALLBACKS_H
#define FLUXUS_TEST_NOP_CALLBACKS_H

#include <stddef.h>
#include <stdint.h>

#include "fluxus.h"

static inline void nop_log(void *u, int32_t level, const char *pl, const char *st,
                           const char *msg) {
    (void)u, (void)level, (void)pl, (void)st, (void)msg;
}
static inline void nop_wakeup(void *u) {
    (void)u;
}
static inline void nop_timer(void *u) {
    (void)u;
}
static inline void nop_item_free(void *u, uint64_t item) {
    (void)u, (void)item;
}
static inline void nop_dead_letter(void *u, uint64_t item, const fluxus_failure *f) {
    (void)u, (void)item, (void)f;
}
static inline int32_t nop_pull(void *u, uint64_t *item) {
    (void)u, (void)item;
    return FLUXUS_PULL_END;
}
static inline int32_t nop_pull_batch(void *u, uint64_t *items, uint32_t cap, uint32_t *count) {
    (void)u, (void)items, (void)cap;
    *count = 0;
    return FLUXUS_PULL_END;
}
static inline int32_t nop_cursor_read(void *u, uint64_t cursor, uint64_t *items, uint32_t cap,
                                      uint32_t *count, uint64_t *next) {
    (void)u, (void)items, (void)cap;
    *count = 0;
    *next = cursor + 1;
    return FLUXUS_PULL_END;
}
static inline uint64_t nop_page_of(void *u, uint64_t item) {
    (void)u, (void)item;
    return 0;
}
static inline void nop_commit(void *u, uint64_t cursor) {
    (void)u, (void)cursor;
}
static inline int32_t nop_map(void *u, uint64_t in, uint64_t *out) {
    (void)u;
    *out = in;
    return 0;
}
static inline int32_t nop_map_batch(void *u, const uint64_t *in, uint64_t *out, int32_t *status,
                                    uint32_t count) {
    (void)u, (void)in, (void)out, (void)status, (void)count;
    return 0;
}
static inline int32_t nop_filter(void *u, uint64_t item, int32_t *keep) {
    (void)u, (void)item;
    *keep = 1;
    return 0;
}
static inline int32_t nop_filter_batch(void *u, const uint64_t *items, int32_t *keep,
                                       int32_t *status, uint32_t count) {
    (void)u, (void)items, (void)keep, (void)status, (void)count;
    return 0;
}
static inline int32_t nop_flat_map(void *u, uint64_t item, fluxus_emitter *em) {
    (void)u, (void)item, (void)em;
    return 0;
}
static inline int32_t nop_flat_map_batch(void *u, const uint64_t *items, uint32_t count,
                                         fluxus_emitter *em) {
    (void)u, (void)items, (void)count, (void)em;
    return 0;
}
static inline int32_t nop_sink(void *u, uint64_t item) {
    (void)u, (void)item;
    return 0;
}
static inline int32_t nop_sink_batch(void *u, const uint64_t *items, int32_t *status,
                                     uint32_t count) {
    (void)u, (void)items, (void)status, (void)count;
    return 0;
}
static inline void nop_async_cancel(void *u, uint64_t item, uint64_t completion, int32_t reason) {
    (void)u, (void)item, (void)completion, (void)reason;
}
static inline int32_t nop_window(void *u, const uint64_t *items, uint32_t count, uint64_t start_ns,
                                 fluxus_emitter *em) {
    (void)u, (void)items, (void)count, (void)start_ns, (void)em;
    return 0;
}
static inline int32_t nop_copy(void *u, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)u, (void)route;
    *copy = item;
    return 0;
}
static inline int32_t nop_join_input(void *u, uint64_t item, uint32_t *input) {
    (void)u, (void)item;
    *input = 0;
    return 0;
}
static inline int32_t nop_load(void *u, const uint64_t *items, uint32_t count, uint64_t *results,
                               int32_t *status) {
    (void)u, (void)items, (void)count, (void)results, (void)status;
    return 0;
}
static inline int32_t nop_attach(void *u, uint64_t item, uint64_t result, uint64_t *out) {
    (void)u, (void)result;
    *out = item;
    return 0;
}
static inline int32_t nop_retry(void *u, uint64_t item, int32_t status, uint32_t attempt) {
    (void)u, (void)item, (void)status, (void)attempt;
    return 0;
}
static inline int32_t nop_worker_init(void *u, uint32_t worker) {
    (void)u, (void)worker;
    return 0;
}
static inline void nop_worker_close(void *u, uint32_t worker) {
    (void)u, (void)worker;
}
static inline void nop_breaker_state(void *u, int32_t from, int32_t to) {
    (void)u, (void)from, (void)to;
}

#endif
