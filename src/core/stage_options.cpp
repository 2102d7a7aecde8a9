// The stage option table: see stage_options.hpp. Options that depend on each other (a retry's
// base delay and its cap, the overflow policy and its timeout, the source pause's threshold and
// periods) are checked one by one here and together at start (Pipeline::validate()), so that
// they may be set in any order.
#include "core/stage_options.hpp"

#include <cstring>

#include "core/pipeline.hpp"
#include "core/stage.hpp"
#include "util/status.hpp"

namespace fluxus {

namespace {

constexpr int64_t kDayUs = 86400LL * 1000000LL;

bool any(const Stage &) { return true; }
bool async_only(const Stage &st) { return st.is_async(); }
bool dedup_only(const Stage &st) { return st.kind == StageKind::dedup; }
bool router_only(const Stage &st) { return st.is_router(); }
bool keyed_bound(const Stage &st) {
    return st.kind == StageKind::dedup || st.kind == StageKind::debounce ||
           st.kind == StageKind::join;
}

const OptionWord kOrderWords[] = {{"ordered", FLUXUS_ORDER_ORDERED},
                                  {"unordered", FLUXUS_ORDER_UNORDERED},
                                  {"per_key", FLUXUS_ORDER_PER_KEY},
                                  {nullptr, 0}};
const OptionWord kOverflowWords[] = {{"block", FLUXUS_OVERFLOW_BLOCK},
                                     {"block_timeout", FLUXUS_OVERFLOW_BLOCK_TIMEOUT},
                                     {"drop_newest", FLUXUS_OVERFLOW_DROP_NEWEST},
                                     {"drop_oldest", FLUXUS_OVERFLOW_DROP_OLDEST},
                                     {"fail", FLUXUS_OVERFLOW_FAIL},
                                     {nullptr, 0}};
const OptionWord kPolicyWords[] = {{"fail_fast", FLUXUS_ERROR_FAIL_FAST},
                                   {"skip", FLUXUS_ERROR_SKIP},
                                   {"dead_letter", FLUXUS_ERROR_DEAD_LETTER},
                                   {nullptr, 0}};
const OptionWord kBackoffWords[] = {{"constant", FLUXUS_BACKOFF_CONSTANT},
                                    {"exponential", FLUXUS_BACKOFF_EXPONENTIAL},
                                    {"jitter", FLUXUS_BACKOFF_EXPONENTIAL_JITTER},
                                    {nullptr, 0}};
const OptionWord kNoneWord[] = {{"none", -1}, {nullptr, 0}};

// A row whose value is stored as is in a field of Stage (or of its retry policy), optionally
// scaled (microseconds in the API, nanoseconds inside).
#define FLUXUS_STORE(expr, scale)                                                            \
    [](Pipeline &, Stage &st, int64_t v, const char *) -> int32_t {                          \
        expr = static_cast<decltype(expr)>(v) * (scale);                                     \
        return FLUXUS_OK;                                                                    \
    },                                                                                       \
        [](const Stage &st) -> int64_t { return static_cast<int64_t>(expr / (scale)); }

const char *dedup_max_keys_refused(const Stage &st, int64_t v) {
    if (st.kind == StageKind::dedup)
        return v == 1 ? "1 is too small for a dedup stage (0: no bound, or at least 2)" : nullptr;
    return v == 0 ? "0 keys (at least 1)" : nullptr;
}

int32_t set_max_keys(Pipeline &, Stage &st, int64_t v, const char *) {
    uint64_t n = uint64_t(v);
    if (st.kind == StageKind::dedup)
        st.dedup_max_keys = n;
    else if (st.kind == StageKind::debounce)
        st.debounce_max_keys = n;
    else
        st.join_max_keys = n;
    return FLUXUS_OK;
}

int64_t get_max_keys(const Stage &st) {
    if (st.kind == StageKind::dedup) return int64_t(st.dedup_max_keys);
    if (st.kind == StageKind::debounce) return int64_t(st.debounce_max_keys);
    return int64_t(st.join_max_keys);
}

// A join's timeout ends incomplete keys; every other stage's bounds each item's time in it.
int32_t set_timeout(Pipeline &, Stage &st, int64_t v, const char *) {
    (st.kind == StageKind::join ? st.join_timeout_ns : st.timeout_ns) = uint64_t(v) * 1000u;
    return FLUXUS_OK;
}

int64_t get_timeout(const Stage &st) {
    return int64_t((st.kind == StageKind::join ? st.join_timeout_ns : st.timeout_ns) / 1000u);
}

int32_t set_default_route(Pipeline &p, Stage &st, int64_t v, const char *fname) {
    uint32_t route = v < 0 ? UINT32_MAX : uint32_t(v);
    if (route != UINT32_MAX && route >= st.outlets.size())
        return set_errorf(FLUXUS_ENOTFOUND, "%s: router '%s' has no route %u (it has %zu)",
                          fname, st.name.c_str(), route, st.outlets.size());
    (void)p;
    st.default_route = route;
    return FLUXUS_OK;
}

int64_t get_default_route(const Stage &st) {
    return st.default_route == UINT32_MAX ? -1 : int64_t(st.default_route);
}

const StageOption kOptions[] = {
    {FLUXUS_OPT_WORKERS, "workers", 1, 256, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.workers, 1)},
    {FLUXUS_OPT_ORDER, "order", FLUXUS_ORDER_ORDERED, FLUXUS_ORDER_PER_KEY, nullptr, any,
     kOrderWords, nullptr, FLUXUS_STORE(st.order, 1)},
    {FLUXUS_OPT_REORDER_WINDOW, "reorder_window", 0, 4096, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.reorder_window, 1)},
    {FLUXUS_OPT_QUEUE_CAPACITY, "capacity", 1, 1 << 24, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.capacity, 1)},
    {FLUXUS_OPT_OVERFLOW, "overflow", FLUXUS_OVERFLOW_BLOCK, FLUXUS_OVERFLOW_FAIL, nullptr, any,
     kOverflowWords, nullptr, FLUXUS_STORE(st.overflow, 1)},
    {FLUXUS_OPT_OVERFLOW_TIMEOUT_US, "overflow_timeout_us", 0, kDayUs, nullptr, any, nullptr,
     nullptr, FLUXUS_STORE(st.overflow_timeout_us, 1)},
    {FLUXUS_OPT_ERROR_POLICY, "on_error", FLUXUS_ERROR_FAIL_FAST, FLUXUS_ERROR_DEAD_LETTER,
     nullptr, any, kPolicyWords, nullptr, FLUXUS_STORE(st.error_policy, 1)},
    {FLUXUS_OPT_IN_FLIGHT, "in_flight", 1, 1 << 20, "async stages", async_only, nullptr, nullptr,
     FLUXUS_STORE(st.in_flight, 1)},
    {FLUXUS_OPT_TIMEOUT_US, "timeout_us", 0, kDayUs, nullptr, any, nullptr, nullptr, set_timeout,
     get_timeout},
    {FLUXUS_OPT_RETRY_ATTEMPTS, "retry", 1, 1000, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.retry.max_attempts, 1)},
    {FLUXUS_OPT_RETRY_BACKOFF, "backoff", FLUXUS_BACKOFF_CONSTANT,
     FLUXUS_BACKOFF_EXPONENTIAL_JITTER, nullptr, any, kBackoffWords, nullptr,
     FLUXUS_STORE(st.retry.backoff, 1)},
    {FLUXUS_OPT_RETRY_BASE_US, "delay_us", 0, kDayUs, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.retry.base_ns, 1000u)},
    {FLUXUS_OPT_RETRY_MAX_US, "max_delay_us", 0, kDayUs, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.retry.max_ns, 1000u)},
    {FLUXUS_OPT_RETRY_SEED, "retry_seed", INT64_MIN, INT64_MAX, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.retry.seed, 1)},
    {FLUXUS_OPT_MAX_KEYS, "max_keys", 0, INT64_MAX, "dedup, debounce and join stages",
     keyed_bound, nullptr, dedup_max_keys_refused, set_max_keys, get_max_keys},
    {FLUXUS_OPT_DEDUP_TTL_US, "ttl_us", 0, kDayUs, "dedup stages", dedup_only, nullptr, nullptr,
     FLUXUS_STORE(st.dedup_ttl_ns, 1000u)},
    {FLUXUS_OPT_DEDUP_LAST_KEYS, "last", 0, INT64_MAX, "dedup stages", dedup_only, nullptr,
     nullptr, FLUXUS_STORE(st.dedup_window, 1)},
    {FLUXUS_OPT_DEFAULT_ROUTE, "default", -1, INT32_MAX, "routers", router_only, kNoneWord,
     nullptr, set_default_route, get_default_route},
    {FLUXUS_OPT_PAUSE_AFTER_FAILURES, "pause_after_failures", 0, UINT32_MAX, nullptr, any,
     nullptr, nullptr, FLUXUS_STORE(st.pause_threshold, 1)},
    {FLUXUS_OPT_PAUSE_WINDOW_US, "pause_window_us", 0, kDayUs, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.pause_window_ns, 1000u)},
    {FLUXUS_OPT_PAUSE_US, "pause_us", 0, kDayUs, nullptr, any, nullptr, nullptr,
     FLUXUS_STORE(st.pause_ns, 1000u)},
};

#undef FLUXUS_STORE

}  // namespace

const StageOption *find_stage_option(int32_t id) {
    for (const StageOption &o : kOptions)
        if (o.id == id) return &o;
    return nullptr;
}

const StageOption *find_stage_option(const char *name) {
    for (const StageOption &o : kOptions)
        if (std::strcmp(o.name, name) == 0) return &o;
    return nullptr;
}

int32_t set_stage_option(Pipeline &p, Stage &st, const StageOption &o, int64_t value,
                         const char *fname) {
    if (!o.applies(st))
        return set_errorf(FLUXUS_EINVAL, "%s: stage '%s': option '%s' applies only to %s", fname,
                          st.name.c_str(), o.name, o.applies_to);
    if (value < o.min || value > o.max)
        return set_errorf(FLUXUS_ERANGE, "%s: stage '%s': option '%s': %lld is not in %lld..%lld", fname,
                          st.name.c_str(), o.name, (long long)value, (long long)o.min,
                          (long long)o.max);
    if (o.refuses)
        if (const char *why = o.refuses(st, value))
            return set_errorf(FLUXUS_ERANGE, "%s: stage '%s': option '%s': %s", fname,
                              st.name.c_str(), o.name, why);
    return o.set(p, st, value, fname);
}

}  // namespace fluxus
