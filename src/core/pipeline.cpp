// Pipeline: construction checks, compilation into segments, the lifecycle (start, wait, drain,
// cancel, shut down), host pushes, and the single place where items end.
#include "core/pipeline.hpp"

#include <cstring>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <new>
#include <thread>

#include "core/current_call.hpp"
#include "core/segment.hpp"
#include "flow/circuit_breaker.hpp"
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"
#include "runtime/runtime.hpp"
#include "util/clock.hpp"
#include "util/handle_registry.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

const char *stage_kind_name(StageKind kind) {
    switch (kind) {
    case StageKind::map: return "map";
    case StageKind::map_batch: return "map_batch";
    case StageKind::filter: return "filter";
    case StageKind::filter_batch: return "filter_batch";
    case StageKind::flat_map: return "flat_map";
    case StageKind::flat_map_batch: return "flat_map_batch";
    case StageKind::dedup: return "dedup";
    case StageKind::sink: return "sink";
    case StageKind::sink_batch: return "sink_batch";
    case StageKind::async_map: return "async_map";
    case StageKind::debounce: return "debounce";
    case StageKind::throttle: return "throttle";
    case StageKind::batch: return "batch";
    case StageKind::reduce: return "reduce";
    case StageKind::window: return "window";
    case StageKind::router: return "router";
    case StageKind::join: return "join";
    case StageKind::loader: return "loader";
    case StageKind::source: return "source";
    }
    return "stage";
}

Pipeline::Pipeline(Runtime *rt, const char *name) : rt_(rt), name_(name ? name : "pipeline") {
    rt_->retain();
    rt_->add_pipeline(this);
}

Pipeline::~Pipeline() {
    shut_down();
    for (auto &st : stages_) {
        st->user.release();
        st->key_user.release();
        st->retry.predicate_user.release();
        st->copy_user.release();
        st->cache_copy_user.release();
        st->async_cancel_user.release();
        if (st->rate_limiter) st->rate_limiter->release();
        if (st->concurrency) st->concurrency->release();
        if (st->breaker) st->breaker->release();
    }
    if (source_.rate_limiter) source_.rate_limiter->release();
    if (source_breaker_) source_breaker_->release();
    source_.user.release();
    item_free_user_.release();
    dead_letter_user_.release();
    route_observer_user_.release();
    rt_->remove_pipeline(this);
    rt_->release();
}

void Pipeline::log(int32_t level, const Stage *stage, const char *message) {
    rt_->log(level, name_.c_str(), stage ? stage->name.c_str() : "", message);
}

// ---------------------------------------------------------------------------------------------
// Building

int32_t Pipeline::check_building(const char *what) const {
    if (state_.load() != FLUXUS_STATE_BUILDING)
        return set_errorf(FLUXUS_ESTATE, "%s: pipeline '%s' has already started (or was cancelled)",
                          what, name_.c_str());
    return FLUXUS_OK;
}

int32_t Pipeline::set_item_free(fluxus_item_free_fn fn, void *user, fluxus_user_free_fn uf) {
    if (int32_t rc = check_building("set_item_free")) return rc;
    item_free_user_.release();
    item_free_ = fn;
    item_free_user_ = UserRef{user, uf};
    return FLUXUS_OK;
}

int32_t Pipeline::set_dead_letter(fluxus_dead_letter_fn fn, void *user, fluxus_user_free_fn uf) {
    if (int32_t rc = check_building("set_dead_letter")) return rc;
    dead_letter_user_.release();
    dead_letter_ = fn;
    dead_letter_user_ = UserRef{user, uf};
    return FLUXUS_OK;
}

int32_t Pipeline::set_fusion(int32_t enabled) {
    if (int32_t rc = check_building("set_fusion")) return rc;
    if (enabled != 0 && enabled != 1)
        return set_errorf(FLUXUS_ERANGE, "set_fusion: %d is not 0 or 1", enabled);
    fusion_ = enabled == 1;
    return FLUXUS_OK;
}

int32_t Pipeline::set_batch_size(uint32_t n) {
    if (int32_t rc = check_building("set_batch_size")) return rc;
    if (n < 1 || n > 65536)
        return set_errorf(FLUXUS_ERANGE, "set_batch_size: %u is not in 1..65536", n);
    batch_ = n;
    return FLUXUS_OK;
}

int32_t Pipeline::set_source(SourceKind kind, const char *name, void (*fn)(), void *user,
                             fluxus_user_free_fn uf) {
    if (int32_t rc = check_building("set_source")) return rc;
    if (kind != SourceKind::push && !fn)
        return set_error(FLUXUS_EINVAL, "set_pull_source: the callback is NULL");
    if (source_.kind != SourceKind::none)
        return set_errorf(FLUXUS_ESTATE, "set_source: pipeline '%s' already has a source",
                          name_.c_str());
    source_.name = name ? name : "source";  // first: the one step that can fail
    source_.kind = kind;
    source_.fn = fn;
    source_.user = UserRef{user, uf};
    return FLUXUS_OK;
}

int32_t Pipeline::set_poll_interval_us(uint32_t us) {
    if (int32_t rc = check_building("set_poll_interval_us")) return rc;
    if (us < 1 || us > 60000000)
        return set_errorf(FLUXUS_ERANGE, "set_poll_interval_us: %u is not in 1..60000000", us);
    source_.poll_interval_us = us;
    return FLUXUS_OK;
}

int32_t Pipeline::set_source_rate_limiter(RateLimiter *l) {
    if (int32_t rc = check_building("set_source_rate_limiter")) return rc;
    if (l) l->retain();
    if (source_.rate_limiter) source_.rate_limiter->release();
    source_.rate_limiter = l;
    return FLUXUS_OK;
}

int32_t Pipeline::set_stage_rate_limiter(Stage &st, RateLimiter *l, uint32_t wait_timeout_ms) {
    if (l) l->retain();
    if (st.rate_limiter) st.rate_limiter->release();
    st.rate_limiter = l;
    st.rate_wait_timeout_ms = wait_timeout_ms;
    return FLUXUS_OK;
}

int32_t Pipeline::set_cursor_source(const char *name, uint64_t start, fluxus_cursor_read_fn read,
                                    fluxus_cursor_page_fn page_of,
                                    fluxus_cursor_commit_fn commit, void *user,
                                    fluxus_user_free_fn user_free) {
    if (!read || !page_of)
        return set_error(FLUXUS_EINVAL, "set_cursor_source: read and page_of are required");
    // Allocated first: once set_source() has taken `user`, nothing may fail.
    std::unique_ptr<CursorTracker> tracker(new CursorTracker(page_of, commit, user));
    if (int32_t rc = set_source(SourceKind::cursor, name, reinterpret_cast<void (*)()>(read), user,
                                user_free))
        return rc;
    source_.cursor = start;
    source_.page_of = page_of;
    source_.commit = commit;
    cursor_ = std::move(tracker);
    return FLUXUS_OK;
}

Pipeline *Pipeline::pin_route_target(uintptr_t handle) {
    HandleSlot *slot = nullptr;
    Pipeline *t = static_cast<Pipeline *>(handle_pin(HandleKind::pipeline, handle, &slot));
    return t;  // its slot is t->handle_slot_: unpin() releases the pin
}

int32_t Pipeline::set_source_breaker(CircuitBreaker *cb) {
    if (int32_t rc = check_building("set_source_breaker")) return rc;
    if (cb) cb->retain();
    if (source_breaker_) source_breaker_->release();
    source_breaker_ = cb;
    return FLUXUS_OK;
}

Pipeline::CallLimit::CallLimit(Pipeline &p, size_t max, bool calls_source)
    : limit_(max), calls_source_(calls_source), p_(&p) {
    std::lock_guard<SpinLock> lock(p.loops_mu_);
    next_ = p.loops_;
    if (next_) next_->prev_ = this;
    p.loops_ = this;
    // A cancel that came before this loop registered: stop before the first item.
    if (p.cancelling()) {
        limit_.store(0, std::memory_order_relaxed);
        cancelled_.store(true, std::memory_order_relaxed);
    }
}

Pipeline::CallLimit::~CallLimit() {
    std::lock_guard<SpinLock> lock(p_->loops_mu_);
    if (prev_)
        prev_->next_ = next_;
    else
        p_->loops_ = next_;
    if (next_) next_->prev_ = prev_;
}

void Pipeline::stop_calls(bool cancel) {
    std::lock_guard<SpinLock> lock(loops_mu_);
    for (CallLimit *l = loops_; l; l = l->next_) {
        if (!cancel && !l->calls_source_) continue;
        l->limit_.store(0, std::memory_order_relaxed);
        if (cancel) l->cancelled_.store(true, std::memory_order_relaxed);
    }
}

uint64_t Pipeline::source_held_until(uint64_t now, Task *waiter) {
    uint64_t until = auto_pause_until_.load(std::memory_order_acquire);
    if (until > now) return until;
    if (source_breaker_) return source_breaker_->open_until(now, waiter, this);
    return 0;
}

void Pipeline::pause_source_for(uint64_t ns, const Stage &why) {
    uint64_t until = rt_->now() + ns;
    uint64_t cur = auto_pause_until_.load();
    while (cur < until && !auto_pause_until_.compare_exchange_weak(cur, until)) {
    }
    stop_source_calls();
    source_pauses_.fetch_add(1, std::memory_order_relaxed);
    char msg[160];
    snprintf(msg, sizeof msg, "source paused for %llu us: too many failures at this stage",
             (unsigned long long)(ns / 1000));
    log(FLUXUS_LOG_WARN, &why, msg);
    // A pull source learns about the pause when it next runs, and arms its own wake-up; push
    // sources hold their pushes (re-checking every millisecond) until the time has passed.
    if (!segments_.empty()) notify_sources();
}

int32_t Pipeline::set_stage_concurrency(Stage &st, ConcurrencyLimiter *l) {
    if (l) l->retain();
    if (st.concurrency) st.concurrency->release();
    st.concurrency = l;
    return FLUXUS_OK;
}

int32_t Pipeline::add_stage(uint32_t *out, StageKind kind, const char *name, void (*fn)(),
                            void *user, fluxus_user_free_fn uf) {
    if (int32_t rc = check_building("add stage")) return rc;
    if (!fn && kind != StageKind::dedup && kind != StageKind::debounce &&
        kind != StageKind::throttle && kind != StageKind::router)
        return set_errorf(FLUXUS_EINVAL, "add %s: the callback is NULL", stage_kind_name(kind));
    if (!attach_open_) {
        const Stage &last = *attach_stage_;
        return set_errorf(FLUXUS_ESTATE,
                          "add %s: nothing to attach it to in pipeline '%s': '%s' %s (choose an "
                          "outlet with fluxus_pipeline_branch)",
                          stage_kind_name(kind), name_.c_str(), last.name.c_str(),
                          last.is_sink() ? "is a sink and ends its chain"
                          : last.is_router() ? "splits into routes"
                                             : "was connected elsewhere");
    }
    Stage *st = nullptr;
    if (int32_t rc = new_stage(kind, name, fn, user, uf, &st)) return rc;
    attach_new_stage(st);
    if (out) *out = st->index;
    return FLUXUS_OK;
}

int32_t Pipeline::new_stage(StageKind kind, const char *name, void (*fn)(), void *user,
                            fluxus_user_free_fn uf, Stage **out) {
    if (stages_.size() >= 4096)
        return set_error(FLUXUS_ERANGE, "add stage: a pipeline has at most 4096 stages");
    // '/' is kept for the names of stages of nested pipelines ("outer/inner"), a later feature
    // that must not meet a name of today's that already looks like one.
    if (name && std::strchr(name, '/'))
        return set_errorf(FLUXUS_EINVAL,
                          "add %s: stage name '%s' contains '/', which is reserved for the "
                          "stages of nested pipelines",
                          stage_kind_name(kind), name);
    std::unique_ptr<Stage> st(new (std::nothrow) Stage());
    if (!st) return set_error(FLUXUS_ENOMEM, "add stage: out of memory");
    st->index = uint32_t(stages_.size());
    st->name = name ? std::string(name)
                    : std::string(stage_kind_name(kind)) + "#" + std::to_string(st->index);
    st->kind = kind;
    st->fn = fn;
    // Attaching the stage (its one outlet) must not fail once it holds the host's `user`: a
    // refused registration takes nothing.
    st->outlets.reserve(1);
    st->user = UserRef{user, uf};
    stages_.push_back(std::move(st));
    *out = stages_.back().get();
    return FLUXUS_OK;
}

int32_t Pipeline::stage_for_option(uint32_t index, const char *option, Stage **out) {
    if (int32_t rc = check_building(option)) return rc;
    if (index >= stages_.size())
        return set_errorf(FLUXUS_ENOTFOUND, "%s: pipeline '%s' has no stage %u (it has %zu)",
                          option, name_.c_str(), index, stages_.size());
    *out = stages_[index].get();
    return FLUXUS_OK;
}

int32_t Pipeline::stage_for_reading(uint32_t index, const char *fname, const Stage **out) const {
    if (index >= stages_.size())
        return set_errorf(FLUXUS_ENOTFOUND, "%s: pipeline '%s' has no stage %u (it has %zu)",
                          fname, name_.c_str(), index, stages_.size());
    *out = stages_[index].get();
    return FLUXUS_OK;
}

int32_t Pipeline::start() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (int32_t rc = check_building("start")) return rc;
        if (!segments_.empty())
            return set_errorf(FLUXUS_ESTATE, "start: pipeline '%s' is already starting",
                              name_.c_str());
        if (int32_t rc = validate()) return rc;
        try {
            build_segments();
        } FLUXUS_CATCH_ALL {
            segments_.clear();
            return set_error(FLUXUS_ENOMEM, "start: out of memory building the pipeline");
        }
    }
    // Not under mu_: the runtime's lock is taken before pipeline locks (shutdown cancels
    // pipelines while holding it).
    int32_t rc = rt_->start();
    std::lock_guard<std::mutex> lock(mu_);
    if (rc == FLUXUS_OK && state_.load() != FLUXUS_STATE_BUILDING)
        rc = set_errorf(FLUXUS_ECANCELED, "start: pipeline '%s' was cancelled while starting",
                        name_.c_str());
    if (rc != FLUXUS_OK) {
        segments_.clear();
        push_queue_ = nullptr;
        push_seg_ = nullptr;
        for (auto &st : stages_) st->queue = nullptr;
        return rc;
    }
    rt_->pipeline_running(+1);
    state_.store(FLUXUS_STATE_RUNNING, std::memory_order_release);
    // Every worker runs once: consumers register on their queues, and a paused pull source
    // simply finds itself paused.
    notify_all_tasks();
    return FLUXUS_OK;
}

int32_t Pipeline::validate() {
    if (rt_->dead())
        return set_error(FLUXUS_ESTATE, "start: the runtime of this pipeline was freed");
    bool source_stages = false;
    for (auto &sp : stages_) source_stages |= sp->is_source();
    // Without a source of its own, a pipeline may still have source stages; then its first
    // chain must start at one of them.
    if (source_.kind == SourceKind::none && (source_to_ || !source_stages))
        return set_errorf(FLUXUS_EINVAL, "start: pipeline '%s' has no source", name_.c_str());
    if (source_.rate_limiter && source_.kind == SourceKind::push)
        return set_errorf(FLUXUS_EINVAL,
                          "start: pipeline '%s' has a source rate limiter but a push source (rate "
                          "limit the first stage, or acquire from the limiter before pushing)",
                          name_.c_str());
    if (source_breaker_ && !source_breaker_->same_clock(rt_))
        return set_errorf(FLUXUS_EINVAL,
                          "start: pipeline '%s': its source breaker and its runtime use "
                          "different clocks",
                          name_.c_str());
    if (source_.rate_limiter && !source_.rate_limiter->same_clock(rt_))
        return set_errorf(FLUXUS_EINVAL,
                          "start: pipeline '%s': its source rate limiter and its runtime use "
                          "different clocks",
                          name_.c_str());
    if (int32_t rc = validate_graph()) return rc;
    for (auto &sp : stages_) {
        Stage &st = *sp;
        if (st.keyed_state() && st.workers > 1) st.order = FLUXUS_ORDER_PER_KEY;
        if (st.is_sink() && st.workers > 1 && st.order != FLUXUS_ORDER_PER_KEY)
            return set_errorf(FLUXUS_EINVAL,
                              "start: sink '%s' has %u workers; a parallel sink must use "
                              "FLUXUS_ORDER_PER_KEY",
                              st.name.c_str(), st.workers);
        if (st.is_async() && st.workers > 1)
            return set_errorf(FLUXUS_EINVAL,
                              "start: async stage '%s' has %u workers; an async stage runs on "
                              "one task (raise its in-flight limit instead)",
                              st.name.c_str(), st.workers);
        if (st.rate_limiter && st.workers > 1 && st.order == FLUXUS_ORDER_ORDERED)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' is rate limited with %u ordered workers; make it "
                              "unordered or per-key, or use one worker",
                              st.name.c_str(), st.workers);
        if (st.rate_limiter && !st.rate_limiter->same_clock(rt_))
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s': its rate limiter and the pipeline's runtime use "
                              "different clocks (create the limiter on the same runtime)",
                              st.name.c_str());
        if (st.retry.enabled() && st.workers > 1 && st.order == FLUXUS_ORDER_ORDERED)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' retries with %u ordered workers; make it "
                              "unordered or per-key, or use one worker",
                              st.name.c_str(), st.workers);
        if (st.breaker && !st.breaker->same_clock(rt_))
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s': its circuit breaker and the pipeline's runtime "
                              "use different clocks",
                              st.name.c_str());
        if (st.breaker && st.workers > 1 && st.order == FLUXUS_ORDER_ORDERED)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' has a circuit breaker and %u ordered workers; "
                              "make it unordered or per-key, or use one worker",
                              st.name.c_str(), st.workers);
        // Options that must agree, set one by one (FLUXUS_OPT_*) in any order.
        if (st.retry.base_ns > st.retry.max_ns)
            return set_errorf(FLUXUS_ERANGE,
                              "start: stage '%s': its first retry delay (%llu us) is above its "
                              "longest (%llu us)",
                              st.name.c_str(), (unsigned long long)(st.retry.base_ns / 1000u),
                              (unsigned long long)(st.retry.max_ns / 1000u));
        if (st.overflow == FLUXUS_OVERFLOW_BLOCK_TIMEOUT && st.overflow_timeout_us == 0)
            return set_errorf(FLUXUS_ERANGE,
                              "start: stage '%s': overflow policy block_timeout needs an "
                              "overflow timeout (FLUXUS_OPT_OVERFLOW_TIMEOUT_US)",
                              st.name.c_str());
        if (st.pause_threshold && (st.pause_window_ns == 0 || st.pause_ns == 0))
            return set_errorf(FLUXUS_ERANGE,
                              "start: stage '%s' pauses the source after %u failures but its "
                              "window or pause is 0 (FLUXUS_OPT_PAUSE_WINDOW_US, "
                              "FLUXUS_OPT_PAUSE_US)",
                              st.name.c_str(), st.pause_threshold);
        if (st.kind == StageKind::dedup &&
            (st.dedup_max_keys != 0) + (st.dedup_ttl_ns != 0) + (st.dedup_window != 0) > 1)
            return set_errorf(FLUXUS_EINVAL,
                              "start: dedup stage '%s' has more than one memory bound (max keys, "
                              "time-to-live, last N keys); choose one",
                              st.name.c_str());
        // These heads run their own loops: failures there end under the error policy, and
        // only the batch and loader loops hand failures to an error branch or route.
        bool own_loop = st.kind == StageKind::batch || st.kind == StageKind::loader ||
                        st.kind == StageKind::join || st.kind == StageKind::window ||
                        st.kind == StageKind::reduce || st.kind == StageKind::debounce;
        if (own_loop && st.retry.enabled())
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' is a %s, which does not retry (retry the "
                              "stage that produces its failures, or route them to an error "
                              "branch)",
                              st.name.c_str(), stage_kind_name(st.kind));
        if (own_loop && st.kind != StageKind::batch && st.kind != StageKind::loader &&
            (st.error_to || st.error_route))
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' is a %s, whose failures cannot be routed (error "
                              "branch or route); they end under its error policy",
                              st.name.c_str(), stage_kind_name(st.kind));
        if (st.cache_entries && st.kind != StageKind::map && st.kind != StageKind::loader)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' is a %s; a cache goes in front of a map or a "
                              "loader",
                              st.name.c_str(), stage_kind_name(st.kind));
        if (st.kind == StageKind::reduce && source_.kind == SourceKind::cursor)
            return set_errorf(FLUXUS_EINVAL,
                              "start: reduce stage '%s' cannot follow a cursor source (its "
                              "inputs end when folded, long before the accumulators carrying "
                              "them: the cursor would commit pages not yet delivered)",
                              st.name.c_str());
        if (st.cache_entries && source_.kind == SourceKind::cursor)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' has a cache, which a cursor source cannot "
                              "track (a cached output is not its input's)",
                              st.name.c_str());
        if (st.kind == StageKind::loader && st.workers > 1)
            return set_errorf(FLUXUS_EINVAL,
                              "start: loader '%s' has %u workers; a loader groups on one worker",
                              st.name.c_str(), st.workers);
        if (st.kind == StageKind::batch && st.workers > 1)
            return set_errorf(FLUXUS_EINVAL,
                              "start: batch stage '%s' has %u workers; a batch stage groups on "
                              "one worker",
                              st.name.c_str(), st.workers);
        if (st.is_async() && st.order == FLUXUS_ORDER_PER_KEY)
            return set_errorf(FLUXUS_EINVAL,
                              "start: async stage '%s' cannot be per-key ordered (use ordered or "
                              "unordered)",
                              st.name.c_str());
        if (st.error_policy == FLUXUS_ERROR_DEAD_LETTER && !dead_letter_)
            return set_errorf(FLUXUS_EINVAL,
                              "start: stage '%s' dead-letters failures but the pipeline has no "
                              "dead-letter callback",
                              st.name.c_str());
    }
    return FLUXUS_OK;
}

void Pipeline::notify_all_tasks() {
    for (auto &seg : segments_)
        for (auto &t : seg->tasks) t->notify();
}

// ---------------------------------------------------------------------------------------------
// Ending items

void Pipeline::free_unadmitted(uint64_t item) {
    if (!item_free_) return;
    try {
        item_free_(item_free_user_.user, item);
    } FLUXUS_ON_FORCED_UNWIND(t_unwind.ended = true) catch (...) {
        log(FLUXUS_LOG_ERROR, nullptr, "the item destructor threw; exception ignored");
    }
}

void Pipeline::release_item(uint64_t item, bool finished) {
    if (cursor_) cursor_->item_ended(item, finished);
    if (!item_free_) return;
    try {
        item_free_(item_free_user_.user, item);
    } FLUXUS_ON_FORCED_UNWIND(t_unwind.ended = true) catch (...) {
        // The item was counted before its destructor ran: a forced unwind out of the
        // destructor leaves it ended (t_unwind.ended tells the loops above not to end it again).
        log(FLUXUS_LOG_ERROR, nullptr, "the item destructor threw; exception ignored");
    }
}

void Pipeline::release_items(const uint64_t *items, size_t n, bool finished) {
    size_t i = 0;
    try {
        for (; i < n; ++i) release_item(items[i], finished);
    } FLUXUS_ON_FORCED_UNWIND((t_unwind.ended = false, orphan_rest(items + i + 1, n - i - 1)))
}

void Pipeline::orphan_rest(const uint64_t *items, size_t n) {
    if (n == 0) return;
    std::lock_guard<std::mutex> lock(orphans_mu_);
    orphans_.insert(orphans_.end(), items, items + n);
    has_orphans_.store(true, std::memory_order_release);
}

void Pipeline::release_orphans() {
    if (!has_orphans_.load(std::memory_order_acquire)) return;
    std::vector<uint64_t> items;
    {
        std::lock_guard<std::mutex> lock(orphans_mu_);
        items.swap(orphans_);
        has_orphans_.store(false, std::memory_order_relaxed);
    }
    release_items(items.data(), items.size(), false);
}

void Pipeline::fail_item(Stage &stage, uint64_t item, int32_t status, const char *message,
                         StageTally *tally, bool destroy) {
    // The failing callback's own text, if it attached one (current_call.hpp).
    std::string text = take_failure_text();
    if (status == FLUXUS_ECANCELED) {
        // A callback that gave up because of a cancel: the item is cancelled, not failed. No
        // retry, route, dead letter, breaker outcome, auto-pause or fail-fast.
        if (t_retry_scope && t_retry_scope->stage == &stage) ++t_retry_scope->worker->head_cancels;
        end_cancelled(stage, item, tally, destroy);  // its text, if any, is dropped
        return;
    }
    // A callback failure at a retrying stage, seen by the worker running it, may get another
    // attempt instead of ending here.
    if (t_retry_scope && t_retry_scope->stage == &stage) {
        if (!t_retry_scope->refusal) {
            ++t_retry_scope->worker->head_failures;  // the breaker's view of the call
            if (destroy && t_retry_scope->worker->park_retry(item, status)) return;
        }
        // Out of retries, or refused by the breaker: an error route (another pipeline, or the
        // error branch) takes the item instead of the error policy.
        if (destroy && stage.routes_errors()) {
            report_routed(stage, item, item_failure(stage, status, message, text));
            t_retry_scope->worker->route_failed(item);
            return;
        }
    }
    if (stage.pause_threshold) {
        uint64_t now = rt_->now();
        bool trip = false;
        {
            std::lock_guard<std::mutex> lock(stage.pause_mu);
            stage.recent_failures.push_back(now);
            if (stage.recent_failures.size() > stage.pause_threshold)
                stage.recent_failures.pop_front();
            if (stage.recent_failures.size() == stage.pause_threshold &&
                now - stage.recent_failures.front() <= stage.pause_window_ns) {
                stage.recent_failures.clear();
                trip = true;
            }
        }
        if (trip) pause_source_for(stage.pause_ns, stage);
    }
    // An item fluxus does not own (a timed-out async item) is not touched after the dead-letter
    // callback: its page is asked before.
    uint64_t page = cursor_ && !destroy ? cursor_->page_of(item) : 0;
    StageTally local;
    StageTally &t = tally ? *tally : local;
    fluxus_failure f = item_failure(stage, status, message, text);
    if (stage.error_policy == FLUXUS_ERROR_DEAD_LETTER && dead_letter_) {
        CallSuspendScope suspended;  // its text would land on another failure
        try {
            dead_letter_(dead_letter_user_.user, item, &f);
        } FLUXUS_CATCH_ALL {
            log(FLUXUS_LOG_ERROR, &stage, "the dead-letter callback threw; exception ignored");
        }
        ++t.dead_lettered;
    } else {
        ++t.failed;
    }
    bool finished = stage.error_policy != FLUXUS_ERROR_FAIL_FAST;
    if (destroy)
        release_item(item, finished);
    else if (cursor_)
        cursor_->page_ended(page, finished);  // the host still holds it, but it has ended
    if (!tally) local.flush_to(stage.c);
    if (stage.error_policy == FLUXUS_ERROR_FAIL_FAST) {
        ReportingScope reporting(&f);  // fail_pipeline records it whole
        char buf[256];
        snprintf(buf, sizeof buf, "%s (status %d)", message, status);
        try {
            fail_pipeline(FLUXUS_EFAILED, status, &stage, buf);  // it logs
        } FLUXUS_ON_FORCED_UNWIND(t_unwind.ended = true)
    } else if (rt_->log_enabled(FLUXUS_LOG_DEBUG)) {
        // The item has ended: if the log callback ends the thread, the loop it was in must not
        // end it again (see UnwindNote::ended).
        try {
            log(FLUXUS_LOG_DEBUG, &stage, describe_failure(f).c_str());
        } FLUXUS_ON_FORCED_UNWIND(t_unwind.ended = true)
    }
}

void Pipeline::end_cancelled(Stage &stage, uint64_t item, StageTally *tally, bool destroy) {
    if (tally)
        ++tally->cancelled;
    else
        stage.c.cancelled.fetch_add(1, std::memory_order_relaxed);
    if (destroy)
        release_item(item, false);
    else if (cursor_)
        cursor_->page_ended(cursor_->page_of(item), false);  // the host still holds it
}

void Pipeline::cancel_items(Stage &stage, const uint64_t *items, size_t n, bool count_in) {
    if (n == 0) return;
    if (count_in) stage.c.in.fetch_add(n, std::memory_order_relaxed);
    stage.c.cancelled.fetch_add(n, std::memory_order_relaxed);
    release_items(items, n, false);
}

void Pipeline::drop_items(Stage &stage, const uint64_t *items, size_t n, bool count_in) {
    if (n == 0) return;
    if (count_in) stage.c.in.fetch_add(n, std::memory_order_relaxed);
    stage.c.dropped.fetch_add(n, std::memory_order_relaxed);
    stage.c.failed.fetch_add(n, std::memory_order_relaxed);
    release_items(items, n, false);
}

void Pipeline::fail_pipeline(int32_t result, int32_t status, const Stage *stage,
                             const char *message) {
    bool first = false;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (result_ == FLUXUS_OK && !cancel_requested_.load()) {
            result_ = result;
            first = true;
            record_failure(status, stage, message);
        }
    }
    if (first) {
        // failure_ no longer changes: it is read without the lock.
        log(FLUXUS_LOG_ERROR, stage, ("pipeline stopped: " + failure_.summary()).c_str());
    }
    cancel();
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

void Pipeline::segment_done() {
    if (segments_done_.fetch_add(1, std::memory_order_acq_rel) + 1 == segments_.size()) finish();
}

void Pipeline::finish() {
    state_.store(FLUXUS_STATE_FINISHED, std::memory_order_release);
    {
        std::lock_guard<std::mutex> lock(done_mu_);
        finished_.store(true, std::memory_order_release);
    }
    done_cv_.notify_all();
    rt_->pipeline_running(-1);
}

void Pipeline::cancel() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_.load() == FLUXUS_STATE_BUILDING) {
            // Cancelled before it started: it can no longer start; nothing was admitted.
            cancel_requested_.store(true);
            result_ = FLUXUS_ECANCELED;
            state_.store(FLUXUS_STATE_FINISHED);
            std::lock_guard<std::mutex> done(done_mu_);
            finished_.store(true);
            return;
        }
        if (finished_.load() || cancel_requested_.load()) {
            stop_calls(true);  // a callback's cancel or failure after another thread's
            return;
        }
        if (result_ == FLUXUS_OK) result_ = FLUXUS_ECANCELED;
        cancel_requested_.store(true);
        // Before cancel() returns, every item loop has stopped starting items (and chains their
        // sinks): the promise that no sink starts once cancel() has returned.
        stop_calls(true);
        // A CAS, not a store: the last segment may finish (finish() takes no lock) between the
        // check above and here, and FINISHED must never go back to CANCELLING.
        int32_t st = state_.load();
        while ((st == FLUXUS_STATE_RUNNING || st == FLUXUS_STATE_DRAINING) &&
               !state_.compare_exchange_weak(st, FLUXUS_STATE_CANCELLING)) {
        }
    }
    if (push_queue_) {
        if (!input_closed_.exchange(true)) push_queue_->producer_done();
        push_queue_->wake_hosts();
    }
    notify_all_tasks();
}

int32_t Pipeline::wait(uint32_t timeout_ms) {
    if (in_callback())
        return set_error(FLUXUS_EINCALLBACK, "wait: not allowed from inside a fluxus callback");
    if (state_.load() == FLUXUS_STATE_BUILDING)
        return set_errorf(FLUXUS_ESTATE, "wait: pipeline '%s' has not started", name_.c_str());
    if (!rt_->wait_flag(finished_, done_mu_, done_cv_, deadline_after_ms(timeout_ms)))
        return set_errorf(FLUXUS_ETIMEDOUT, "wait: pipeline '%s' still running after %u ms",
                          name_.c_str(), timeout_ms);
    std::lock_guard<std::mutex> lock(mu_);
    if (result_ != FLUXUS_OK) set_error(result_, ended_message());
    return result_;
}

int32_t Pipeline::drain(uint32_t timeout_ms) {
    if (in_callback())
        return set_error(FLUXUS_EINCALLBACK, "drain: not allowed from inside a fluxus callback");
    if (state_.load() == FLUXUS_STATE_BUILDING)
        return set_errorf(FLUXUS_ESTATE, "drain: pipeline '%s' has not started", name_.c_str());
    uint64_t deadline = deadline_after_ms(timeout_ms);
    if (!finished_.load()) {
        int32_t expected = FLUXUS_STATE_RUNNING;
        state_.compare_exchange_strong(expected, FLUXUS_STATE_DRAINING);
        if (push_queue_) close_input();
        if (!drain_requested_.exchange(true)) {
            stop_source_calls();
            notify_sources();
        }
    }
    if (rt_->wait_flag(finished_, done_mu_, done_cv_, deadline)) return wait(0);

    // Deadline passed: record who still holds items, then cancel the rest.
    std::string held;
    for (auto &sp : stages_) {
        Stage &st = *sp;
        // At every stage in + spawned == ended + routed once it holds nothing: items sent down
        // an error branch have left it, and copies a broadcast made are counted out too.
        uint64_t in = st.c.in.load(), routed = st.c.routed.load();
        uint64_t total = in + st.c.spawned.load(), ended = st.c.ended() + routed;
        uint64_t h = total > ended ? total - ended : 0;
        if (st.kind == StageKind::flat_map || st.kind == StageKind::flat_map_batch ||
            st.kind == StageKind::batch || st.kind == StageKind::reduce ||
            st.kind == StageKind::window || st.kind == StageKind::join) {
            // out counts emitted items, not ended inputs
            uint64_t done = st.c.filtered.load() + st.c.failed.load() +
                            st.c.dead_lettered.load() + st.c.cancelled.load() + routed;
            h = in > done ? in - done : 0;
        }
        st.c.held_at_deadline.store(h);
        if (h) {
            if (!held.empty()) held += ", ";
            held += st.name + " (" + std::to_string(h) + ")";
        }
    }
    cancel();
    rt_->wait_flag(finished_, done_mu_, done_cv_, UINT64_MAX);
    std::string msg = "drain: deadline of " + std::to_string(timeout_ms) +
                      " ms passed; cancelled items held by: " + (held.empty() ? "none" : held);
    log(FLUXUS_LOG_WARN, nullptr, msg.c_str());
    return set_error(FLUXUS_ETIMEDOUT, msg);
}

int32_t Pipeline::close_input() {
    if (source_.kind != SourceKind::push)
        return set_errorf(FLUXUS_ESTATE, "close_input: pipeline '%s' has no push source",
                          name_.c_str());
    if (state_.load() == FLUXUS_STATE_BUILDING)
        return set_errorf(FLUXUS_ESTATE, "close_input: pipeline '%s' has not started",
                          name_.c_str());
    if (!push_queue_) return FLUXUS_OK;  // cancelled before start
    if (!input_closed_.exchange(true)) push_queue_->producer_done();
    push_queue_->wake_hosts();
    return FLUXUS_OK;
}

int32_t Pipeline::set_paused(bool paused) {
    bool has_source = source_.kind != SourceKind::none;
    for (auto &sp : stages_) has_source |= sp->is_source();
    if (!has_source)
        return set_errorf(FLUXUS_ESTATE, "pause/resume: pipeline '%s' has no source",
                          name_.c_str());
    bool was = paused_.exchange(paused);
    if (paused) stop_source_calls();  // also when already paused by another thread
    if (was && !paused && state_.load() != FLUXUS_STATE_BUILDING && !segments_.empty()) {
        if (push_queue_) push_queue_->wake_hosts();
        notify_sources();
    }
    return FLUXUS_OK;
}

void Pipeline::notify_sources() {
    for (auto &seg : segments_)
        if (seg->pull_input) seg->tasks[0]->notify();
}

int32_t Pipeline::push(const uint64_t *items, uint32_t count, uint32_t timeout_ms, bool try_only,
                       uint32_t *pushed) {
    *pushed = 0;
    if (source_.kind != SourceKind::push)
        return set_errorf(FLUXUS_ESTATE, "push: pipeline '%s' has no push source", name_.c_str());
    if (state_.load() == FLUXUS_STATE_BUILDING)
        return set_errorf(FLUXUS_ESTATE, "push: pipeline '%s' has not started", name_.c_str());
    if (cancelling() || finished_.load())
        return set_errorf(FLUXUS_ECANCELED, "push: pipeline '%s' was cancelled or has finished",
                          name_.c_str());
    if (input_closed_.load())
        return set_errorf(FLUXUS_ECLOSED, "push: the input of pipeline '%s' is closed",
                          name_.c_str());
    if (!try_only && timeout_ms != 0 && in_callback())
        return set_error(FLUXUS_EINCALLBACK,
                         "push: a blocking push from inside a callback could deadlock; use "
                         "fluxus_pipeline_try_push");
    if (count == 0) return FLUXUS_OK;
    if (try_only && paused_.load())
        return set_error(FLUXUS_EFULL, "try_push: the source is paused");
    if (try_only && source_held_until(rt_->now(), nullptr))
        return set_error(FLUXUS_EFULL, "try_push: the source is paused after failures (or its "
                                       "breaker is open)");

    // From here on the key function, the dead-letter callback and the item destructor may run
    // on this host thread: inside them, blocking calls and freeing this pipeline are refused.
    CallbackScope scope;
    Segment &seg = *push_seg_;
    Stage &head = *seg.head();
    bool blocking_policy =
        head.overflow == FLUXUS_OVERFLOW_BLOCK || head.overflow == FLUXUS_OVERFLOW_BLOCK_TIMEOUT;
    uint64_t deadline = try_only ? 0 : deadline_after_ms(timeout_ms);
    // A keyed queue can accept a later item before an earlier one; push one at a time there so
    // that what was pushed is always a prefix of `items`.
    uint32_t step = seg.keyed && blocking_policy ? 1 : count;
    PendingItems pend;
    for (uint32_t done = 0; done < count; done += step) {
        uint32_t n = std::min(step, count - done);
        pend.clear();
        admit(n);
        try {
            seg.stage_items(items + done, n, pend);  // key failures end here, counted
        } FLUXUS_ON_FORCED_UNWIND(cancel_items(head, pend.items.data(), pend.size(), true))
        if (!blocking_policy) {
            seg.accept(pend, nullptr);
            *pushed += n;
            continue;
        }
        size_t offered = pend.size();
        head.c.in.fetch_add(offered, std::memory_order_relaxed);
        seg.input->push_wait(pend, deadline, [this] {
            if (cancelling() || input_closed_.load(std::memory_order_relaxed)) return 1;
            if (paused_.load(std::memory_order_relaxed)) return 2;
            return source_held_until(rt_->now(), nullptr) ? 3 : 0;
        });
        size_t left = pend.size();
        if (left) {
            // Not admitted after all: the caller keeps these items.
            head.c.in.fetch_sub(left, std::memory_order_relaxed);
            source_admitted_.fetch_sub(left, std::memory_order_relaxed);
            *pushed += uint32_t(n - left);
            if (cancelling())
                return set_error(FLUXUS_ECANCELED, "push: the pipeline was cancelled");
            if (input_closed_.load())
                return set_error(FLUXUS_ECLOSED, "push: the input was closed");
            if (try_only)
                return set_error(FLUXUS_EFULL, "try_push: the first stage's queue is full");
            return set_errorf(FLUXUS_ETIMEDOUT, "push: still full after %u ms", timeout_ms);
        }
        *pushed += n;
    }
    return FLUXUS_OK;
}

void Pipeline::shut_down() {
    if (shut_down_.exchange(true)) return;
    if (segments_.empty()) return;  // never started
    cancel();
    rt_->wait_flag(finished_, done_mu_, done_cv_, UINT64_MAX);
    // Tasks may still be finishing their last slice, and timers may still point at them.
    for (int pass = 0; pass < 2; ++pass) {
        while (active_tasks.load(std::memory_order_acquire) > 0) {
            // A dead runtime has no workers: a task notified after it shut down (a resume, a
            // completion, a limiter wake-up) waits in its queue, and only we can run it.
            if (rt_->host_driven() || rt_->dead()) {
                if (rt_->run_ready() == 0) std::this_thread::yield();
            } else {
                std::this_thread::sleep_for(std::chrono::microseconds(20));
            }
        }
        rt_->remove_timers(this);
        // Shared limiters may still wake their waiters: they must forget ours.
        for (auto &st : stages_) {
            if (st->rate_limiter) st->rate_limiter->remove_owner(this);
            if (st->concurrency) st->concurrency->remove_owner(this);
            if (st->breaker) st->breaker->remove_owner(this);
        }
        if (source_.rate_limiter) source_.rate_limiter->remove_owner(this);
        if (source_breaker_) source_breaker_->remove_owner(this);
    }
    // Completions may still arrive from host threads: they must not notify freed tasks.
    for (auto &st : stages_)
        if (st->async) st->async->set_worker(nullptr);
    segments_.clear();
    push_queue_ = nullptr;
    push_seg_ = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Stats

void Pipeline::fill_stats(fluxus_pipeline_stats &s) const {
    uint64_t admitted = source_admitted_.load(), delivered = 0, filtered = 0, failed = 0, dl = 0,
             cancelled = 0, dropped = 0;
    for (auto &sp : stages_) {
        const StageCounters &c = sp->c;
        admitted += c.spawned.load();
        if (sp->is_sink()) delivered += c.out.load();
        filtered += c.filtered.load();
        failed += c.failed.load();
        dl += c.dead_lettered.load();
        cancelled += c.cancelled.load();
        dropped += c.dropped.load();
    }
    uint64_t ended = delivered + filtered + failed + dl + cancelled;
    s.state = state_.load();
    s.admitted = admitted;
    s.delivered = delivered;
    s.filtered = filtered;
    s.failed = failed;
    s.dead_lettered = dl;
    s.cancelled = cancelled;
    s.in_flight = admitted > ended ? admitted - ended : 0;
    s.dropped = dropped;
    s.balanced = admitted == ended ? 1 : 0;
    s.source_pauses = source_pauses_.load();
    std::lock_guard<std::mutex> lock(mu_);
    s.result = finished_.load() ? result_ : 0;
}

void Pipeline::fill_stage_stats(const Stage &st, fluxus_stage_stats &s) const {
    const StageCounters &c = st.c;
    s.workers = st.workers;
    s.in = c.in.load();
    s.out = c.out.load();
    s.filtered = c.filtered.load();
    s.failed = c.failed.load();
    s.dead_lettered = c.dead_lettered.load();
    s.cancelled = c.cancelled.load();
    s.dropped = c.dropped.load();
    bool live = !segments_.empty() && st.queue;
    s.queue_depth = live ? st.queue->depth() : 0;
    s.queue_peak = live ? st.queue->peak() : 0;
    s.queue_capacity = live ? st.queue->capacity() : 0;
    s.busy_ns = c.busy_ns.load();
    s.held_at_deadline = c.held_at_deadline.load();
    s.dedup_keys = c.dedup_keys.load();
    s.dedup_forgotten = c.dedup_forgotten.load();
    s.in_flight = st.async ? st.async->in_use() : 0;
    s.timed_out = c.timed_out.load() + (st.async ? st.async->timed_out.load() : 0);
    s.late = st.async ? st.async->late.load() : 0;
    s.retries = c.retries.load();
    s.retry_waiting = c.retry_waiting.load();
    s.spawned = c.spawned.load();
    s.routed = c.routed.load();
    s.cache_hits = c.cache_hits.load();
    s.cache_misses = c.cache_misses.load();
}

}  // namespace fluxus
