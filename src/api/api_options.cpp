// C API: stage options by number (core/stage_options.hpp holds the table).
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "api/api_util.hpp"
#include "core/stage_options.hpp"

using namespace fluxus;

namespace {

const StageOption *option_or_error(int32_t option, const char *fname) {
    const StageOption *o = find_stage_option(option);
    if (!o) set_errorf(FLUXUS_EINVAL, "%s: unknown option %d", fname, option);
    return o;
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
        const StageOption *o = option_or_error(option, fname);
        if (!o) return FLUXUS_EINVAL;
        *out_min = o->min;
        *out_max = o->max;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_get_name(const char **out, int32_t option) {
    const char *fname = "fluxus_option_get_name";
    FLUXUS_API_GUARD({
        if (!out) return set_errorf(FLUXUS_EINVAL, "%s: out is NULL", fname);
        const StageOption *o = option_or_error(option, fname);
        if (!o) return FLUXUS_EINVAL;
        *out = o->name;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_get_id(int32_t *out, const char *name) {
    const char *fname = "fluxus_option_get_id";
    FLUXUS_API_GUARD({
        if (!out || !name) return set_errorf(FLUXUS_EINVAL, "%s: out or name is NULL", fname);
        const StageOption *o = find_stage_option(name);
        if (!o) return set_errorf(FLUXUS_ENOTFOUND, "%s: no option is named '%s'", fname, name);
        *out = o->id;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_option_parse_value(int64_t *out, int32_t option, const char *text) {
    const char *fname = "fluxus_option_parse_value";
    FLUXUS_API_GUARD({
        if (!out || !text) return set_errorf(FLUXUS_EINVAL, "%s: out or text is NULL", fname);
        const StageOption *o = option_or_error(option, fname);
        if (!o) return FLUXUS_EINVAL;
        for (const OptionWord *w = o->words; w && w->word; ++w)
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
            for (const OptionWord *w = o->words; w && w->word; ++w)
                names += std::string(names.empty() ? "" : ", ") + w->word;
            if (names.empty())
                return set_errorf(FLUXUS_EINVAL, "%s: option '%s' takes a number, not '%s'",
                                  fname, o->name, text);
            return set_errorf(FLUXUS_EINVAL, "%s: option '%s' is one of %s (or its number); not '%s'",
                              fname, o->name, names.c_str(), text);
        }
        *out = v;
        return FLUXUS_OK;
    });
}

}  // extern "C"
