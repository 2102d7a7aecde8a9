// C API: stage options by number (core/stage_options.hpp holds the table).
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "api/api_util.hpp"
#include "core/pipeline.hpp"
#include "core/stage_options.hpp"
#include "runtime/runtime.hpp"

using namespace fluxus;

namespace {

// Pipeline-wide and runtime options: few, and each stored by the object's own setter, which
// checks its state; the rows add what the option calls share (id, name, bounds).
struct PipelineOption {
    int32_t id;
    const char *name;
    int64_t min, max;
    int32_t (*set)(Pipeline &, int64_t);
    int64_t (*get)(const Pipeline &);
};

const PipelineOption kPipelineOptions[] = {
    {FLUXUS_OPT_BATCH_SIZE, "batch_size", 1, 65536,
     [](Pipeline &p, int64_t v) { return p.set_batch_size(uint32_t(v)); },
     [](const Pipeline &p) { return int64_t(p.batch_size()); }},
    {FLUXUS_OPT_FUSION, "fusion", 0, 1,
     [](Pipeline &p, int64_t v) { return p.set_fusion(int32_t(v)); },
     [](const Pipeline &p) { return int64_t(p.fusion()); }},
    {FLUXUS_OPT_POLL_INTERVAL_US, "poll_interval_us", 1, 60000000,
     [](Pipeline &p, int64_t v) { return p.set_poll_interval_us(uint32_t(v)); },
     [](const Pipeline &p) { return int64_t(p.source().poll_interval_us); }},
};

struct RuntimeOption {
    int32_t id;
    const char *name;
    int64_t min, max;
    const char *(*refuses)(int64_t);
    int32_t (*set)(Runtime &, int64_t);
    int64_t (*get)(const Runtime &);
};

const RuntimeOption kRuntimeOptions[] = {
    {FLUXUS_OPT_RUNTIME_WORKERS, "runtime_workers", 0, 1024, nullptr,
     [](Runtime &r, int64_t v) { return r.set_workers(uint32_t(v)); },
     [](const Runtime &r) { return int64_t(r.workers()); }},
    {FLUXUS_OPT_SPIN_US, "spin_us", 0, 100000, nullptr,
     [](Runtime &r, int64_t v) { return r.set_spin_us(uint32_t(v)); },
     [](const Runtime &r) { return int64_t(r.spin_us()); }},
    {FLUXUS_OPT_STALL_THRESHOLD_US, "stall_threshold_us", 0, 3600000000LL,
     [](int64_t v) -> const char * {
         if (v % 1000) return "not a whole number of milliseconds";
         return v != 0 && v < 10000 ? "0 (off) or at least 10000" : nullptr;
     },
     [](Runtime &r, int64_t v) { return r.set_stall_threshold_ms(uint32_t(v / 1000)); },
     [](const Runtime &r) { return int64_t(r.stall_threshold_ms()) * 1000; }},
};

template <class Row, size_t N>
const Row *find_row(const Row (&rows)[N], int32_t id) {
    for (const Row &r : rows)
        if (r.id == id) return &r;
    return nullptr;
}

// What every option has, whichever object it belongs to.
struct OptionInfo {
    int32_t id;
    const char *name;
    int64_t min, max;
    const OptionWord *words;
};

bool option_info(int32_t id, OptionInfo *out) {
    if (const StageOption *o = find_stage_option(id)) {
        *out = OptionInfo{o->id, o->name, o->min, o->max, o->words};
        return true;
    }
    if (const PipelineOption *o = find_row(kPipelineOptions, id)) {
        *out = OptionInfo{o->id, o->name, o->min, o->max, nullptr};
        return true;
    }
    if (const RuntimeOption *o = find_row(kRuntimeOptions, id)) {
        *out = OptionInfo{o->id, o->name, o->min, o->max, nullptr};
        return true;
    }
    return false;
}

bool info_or_error(int32_t option, const char *fname, OptionInfo *out) {
    if (option_info(option, out)) return true;
    set_errorf(FLUXUS_EINVAL, "%s: unknown option %d", fname, option);
    return false;
}

const StageOption *option_or_error(int32_t option, const char *fname) {
    const StageOption *o = find_stage_option(option);
    if (o) return o;
    OptionInfo i;
    if (option_info(option, &i))
        set_errorf(FLUXUS_EINVAL, "%s: option '%s' is not a stage option", fname, i.name);
    else
        set_errorf(FLUXUS_EINVAL, "%s: unknown option %d", fname, option);
    return nullptr;
}

int32_t check_bounds(const char *fname, const char *what, const char *name, int64_t v,
                     int64_t min, int64_t max) {
    if (v < min || v > max)
        return set_errorf(FLUXUS_ERANGE, "%s: %s: option '%s': %lld is not in %lld..%lld", fname,
                          what, name, (long long)v, (long long)min, (long long)max);
    return FLUXUS_OK;
}

}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_stage_set_option(fluxus_pipeline *p, uint32_t stage, int32_t option,
                                           int64_t value) {
    const char *fname = "fluxus_stage_set_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(pl, p, fname);
        const StageOption *o = option_or_error(option, fname);
        if (!o) return FLUXUS_EINVAL;
        Stage *st = nullptr;
        if (int32_t rc = pl->stage_for_option(stage, fname, &st)) return rc;
        return set_stage_option(*pl, *st, *o, value, fname);
    });
}

FLUXUS_API int32_t fluxus_stage_get_option(int64_t *out, fluxus_pipeline *p, uint32_t stage,
                                           int32_t option) {
    const char *fname = "fluxus_stage_get_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(pl, p, fname);
        if (!out) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        const StageOption *o = option_or_error(option, fname);
        if (!o) return FLUXUS_EINVAL;
        const Stage *st = nullptr;
        if (int32_t rc = pl->stage_for_reading(stage, fname, &st)) return rc;
        if (!o->applies(*st))
            return set_errorf(FLUXUS_EINVAL, "%s: stage '%s': option '%s' applies only to %s",
                              fname, st->name.c_str(), o->name, o->applies_to);
        *out = o->get(*st);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_get_bounds(int64_t *out_min, int64_t *out_max, int32_t option) {
    const char *fname = "fluxus_option_get_bounds";
    FLUXUS_API_GUARD({
        if (!out_min || !out_max) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        OptionInfo o;
        if (!info_or_error(option, fname, &o)) return FLUXUS_EINVAL;
        *out_min = o.min;
        *out_max = o.max;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_get_name(const char **out, int32_t option) {
    const char *fname = "fluxus_option_get_name";
    FLUXUS_API_GUARD({
        if (!out) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        OptionInfo o;
        if (!info_or_error(option, fname, &o)) return FLUXUS_EINVAL;
        *out = o.name;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_get_id(int32_t *out, const char *name) {
    const char *fname = "fluxus_option_get_id";
    FLUXUS_API_GUARD({
        if (!out || !name) return set_errorf(FLUXUS_EINVAL, "%s: out or name is NULL", fname);
        if (const StageOption *o = find_stage_option(name)) {
            *out = o->id;
            return FLUXUS_OK;
        }
        for (const PipelineOption &o : kPipelineOptions)
            if (std::strcmp(o.name, name) == 0) {
                *out = o.id;
                return FLUXUS_OK;
            }
        for (const RuntimeOption &o : kRuntimeOptions)
            if (std::strcmp(o.name, name) == 0) {
                *out = o.id;
                return FLUXUS_OK;
            }
        return set_errorf(FLUXUS_ENOTFOUND, "%s: no option is named '%s'", fname, name);
    });
}

FLUXUS_API int32_t fluxus_option_parse_value(int64_t *out, int32_t option, const char *text) {
    const char *fname = "fluxus_option_parse_value";
    FLUXUS_API_GUARD({
        if (!out || !text) return set_errorf(FLUXUS_EINVAL, "%s: out or text is NULL", fname);
        OptionInfo o;
        if (!info_or_error(option, fname, &o)) return FLUXUS_EINVAL;
        for (const OptionWord *w = o.words; w && w->word; ++w)
            if (std::strcmp(w->word, text) == 0) {
                *out = w->value;
                return FLUXUS_OK;
            }
        char *end = nullptr;
        errno = 0;
        long long v = std::strtoll(text, &end, 10);
        if (*text == '\0' || *end != '\0' || errno == ERANGE || (*text != '-' && *text != '+' &&
                                                                 (*text < '0' || *text > '9'))) {
            std::string names;
            for (const OptionWord *w = o.words; w && w->word; ++w)
                names += std::string(names.empty() ? "" : ", ") + w->word;
            if (names.empty())
                return set_errorf(FLUXUS_EINVAL, "%s: option '%s' takes a number, not '%s'",
                                  fname, o.name, text);
            return set_errorf(FLUXUS_EINVAL, "%s: option '%s' is one of %s (or its number); not '%s'",
                              fname, o.name, names.c_str(), text);
        }
        *out = v;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_option(fluxus_pipeline *p, int32_t option, int64_t value) {
    const char *fname = "fluxus_pipeline_set_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(pl, p, fname);
        const PipelineOption *o = find_row(kPipelineOptions, option);
        if (!o) return set_errorf(FLUXUS_EINVAL, "%s: %d is not a pipeline option", fname, option);
        if (int32_t rc = check_bounds(fname, "pipeline", o->name, value, o->min, o->max))
            return rc;
        return o->set(*pl, value);
    });
}

FLUXUS_API int32_t fluxus_pipeline_get_option(int64_t *out, fluxus_pipeline *p, int32_t option) {
    const char *fname = "fluxus_pipeline_get_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(pl, p, fname);
        if (!out) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        const PipelineOption *o = find_row(kPipelineOptions, option);
        if (!o) return set_errorf(FLUXUS_EINVAL, "%s: %d is not a pipeline option", fname, option);
        *out = o->get(*pl);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_set_option(fluxus_runtime *rt, int32_t option, int64_t value) {
    const char *fname = "fluxus_runtime_set_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(r, rt, fname);
        const RuntimeOption *o = find_row(kRuntimeOptions, option);
        if (!o) return set_errorf(FLUXUS_EINVAL, "%s: %d is not a runtime option", fname, option);
        if (int32_t rc = check_bounds(fname, "runtime", o->name, value, o->min, o->max)) return rc;
        if (o->refuses)
            if (const char *why = o->refuses(value))
                return set_errorf(FLUXUS_ERANGE, "%s: option '%s': %lld: %s", fname, o->name,
                                  (long long)value, why);
        return o->set(*r, value);
    });
}

FLUXUS_API int32_t fluxus_runtime_get_option(int64_t *out, fluxus_runtime *rt, int32_t option) {
    const char *fname = "fluxus_runtime_get_option";
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(r, rt, fname);
        if (!out) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        const RuntimeOption *o = find_row(kRuntimeOptions, option);
        if (!o) return set_errorf(FLUXUS_EINVAL, "%s: %d is not a runtime option", fname, option);
        *out = o->get(*r);
        return FLUXUS_OK;
    });
}

}  // extern "C"
