// Standalone driver for the spec fuzz target (no libFuzzer needed): replays every file of the
// given corpus directories (or files), then runs N deterministic pseudo-random inputs: seeds
// mutated with byte edits, dictionary tokens, deletions, duplications and splices, and specs
// generated from the grammar. The spec-fuzz-smoke test runs it over fuzz/corpus/.
//
//   spec_fuzz_driver [-runs=N] [-seed=S] [-max_len=L] [-v] PATH...
//
// A violated invariant or a crash aborts (the input is printed by the target); exit 0 otherwise.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "spec_fuzz.hpp"

namespace {

uint64_t g_state;
uint64_t next_u64() {  // splitmix64
    uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
size_t below(size_t n) { return n ? size_t(next_u64() % n) : 0; }

// Tokens of the language: kinds, options, option words, registered names, punctuation.
const char *const kTokens[] = {
    "source", "map", "map_batch", "filter", "filter_batch", "flat_map", "flat_map_batch",
    "sink", "sink_batch", "async_map", "reduce", "window", "batch", "dedup", "throttle",
    "debounce", "router", "broadcast", "as", "error", "workers", "order", "capacity",
    "overflow", "on_error", "retry", "backoff", "delay_us", "max_delay_us", "retry_if",
    "timeout_us", "in_flight", "key", "copy", "default", "max_keys", "ttl_us", "last", "size",
    "linger_us", "kind", "step", "period_us", "quiet_us", "ordered", "unordered", "per_key",
    "block", "drop_newest", "drop_oldest", "fail", "fail_fast", "skip", "dead_letter",
    "constant", "exponential", "jitter", "count", "time", "session", "parse", "enrich", "fix",
    "parse_batch", "keep", "keep_batch", "explode", "group", "write", "store", "count",
    "write_batch", "fetch", "total", "agg", "by_kind", "dup", "by_id", "transient", "numbers",
    "loader", "join", "attach", "inputs", "input", "cache", "cache_ttl_us", "cache_copy",
    "fetch_rows", "put_rows", "which_side",
    "(", ")", "{", "}", "|", ",", ":", ";", "=", "@", "#", "\n", " ", "0", "1", "4", "64",
    "4294967296", "18446744073709551615", "99999999999999999999", "a: ", "error: ", "@store",
    "as store", "router(by_kind) {", "broadcast(copy=dup) {",
};
constexpr size_t kTokenCount = sizeof kTokens / sizeof kTokens[0];

const char kAlphabet[] = "(){}|,:;=@# \n\tabcdefghijklmnopqrstuvwxyz_0123456789";

void mutate(std::string &s, const std::vector<std::string> &seeds, size_t max_len) {
    int edits = 1 + int(below(4));
    for (int e = 0; e < edits; ++e) {
        switch (below(7)) {
        case 0:  // replace a byte
            if (!s.empty()) s[below(s.size())] = kAlphabet[below(sizeof kAlphabet - 1)];
            break;
        case 1:  // any byte (rarely a NUL, which ends the spec)
            if (!s.empty()) s[below(s.size())] = char(below(256));
            break;
        case 2:  // insert a token
            s.insert(below(s.size() + 1), kTokens[below(kTokenCount)]);
            break;
        case 3: {  // delete a range
            if (s.empty()) break;
            size_t at = below(s.size());
            s.erase(at, 1 + below(std::min<size_t>(16, s.size() - at)));
            break;
        }
        case 4: {  // duplicate a range
            if (s.empty()) break;
            size_t at = below(s.size());
            size_t len = 1 + below(std::min<size_t>(32, s.size() - at));
            s.insert(below(s.size() + 1), s.substr(at, len));
            break;
        }
        case 5: {  // splice with another seed
            const std::string &o = seeds[below(seeds.size())];
            s = s.substr(0, below(s.size() + 1)) + o.substr(below(o.size() + 1));
            break;
        }
        default:  // truncate
            s.resize(below(s.size() + 1));
            break;
        }
    }
    if (s.size() > max_len) s.resize(max_len);
}

// ---- a small generator of (mostly) well-formed specs ----
const char *const kStepsPlain[] = {"parse", "enrich", "fix", "keep", "explode",
                                   "map(parse)", "filter(keep)", "flat_map(explode)",
                                   "map_batch(parse_batch)", "filter_batch(keep_batch)",
                                   "flat_map_batch(group)", "async_map(fetch)", "reduce(total)",
                                   "window(agg, size=3)", "window(agg, kind=time, size=1000)",
                                   "window(agg, size=4, step=2)", "batch(group, size=8)",
                                   "batch(group, size=8, linger_us=100)", "dedup",
                                   "dedup(last=16)", "dedup(ttl_us=1000)", "dedup(max_keys=64)",
                                   "throttle(period_us=100)", "debounce(quiet_us=100)"};
const char *const kSinks[] = {"write", "store", "count", "sink(write)", "sink_batch(write_batch)"};
const char *const kOptions[] = {"workers=4", "order=unordered", "order=per_key", "capacity=64",
                                "overflow=drop_oldest", "on_error=skip", "retry=3",
                                "backoff=constant", "delay_us=10", "timeout_us=1000",
                                "key=by_id", "retry_if=transient", "in_flight=8", "workers=0",
                                "wrkers=2", "order=sideways"};

void gen_chain(std::string &out, int depth, int &names);

void gen_step_options(std::string &out) {
    if (below(3) == 0) {
        // Replace a trailing ')' with options, or add a parenthesised list.
        std::string opt = kOptions[below(sizeof kOptions / sizeof *kOptions)];
        if (!out.empty() && out.back() == ')') {
            out.pop_back();
            out += ", " + opt + ")";
        }
    }
}

void gen_chain(std::string &out, int depth, int &names) {
    int steps = int(below(4));
    for (int i = 0; i < steps; ++i) {
        out += kStepsPlain[below(sizeof kStepsPlain / sizeof *kStepsPlain)];
        gen_step_options(out);
        if (below(6) == 0 && depth < 6) {
            out += " { error: ";
            gen_chain(out, depth + 1, names);
            out += " }";
        }
        out += " | ";
    }
    size_t end = below(5);
    if (end == 0 && depth < 6) {
        out += below(2) ? "router(by_kind" : "broadcast(copy=dup";
        if (below(3) == 0) out += ", default=r0";
        out += ") {\n";
        int routes = 1 + int(below(3));
        for (int r = 0; r < routes; ++r) {
            out += "  r" + std::to_string(r) + ": ";
            gen_chain(out, depth + 1, names);
            out += below(2) ? ";\n" : "\n";
        }
        out += "}";
    } else if (end == 1 && names > 0) {
        out += "@n" + std::to_string(below(size_t(names) + 1));
    } else {
        out += kSinks[below(sizeof kSinks / sizeof *kSinks)];
        if (below(2)) out += " as n" + std::to_string(names++);
    }
}

std::string generate() {
    std::string out = below(8) ? "source(numbers) | " : "source | ";
    int names = 0;
    gen_chain(out, 0, names);
    if (below(4) == 0) out += "  # a comment";
    return out;
}

bool read_file(const std::filesystem::path &path, std::string &out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

int32_t run(const std::string &s, uint64_t &ok) {
    int built = 0;
    int32_t rc = spec_fuzz_one(reinterpret_cast<const uint8_t *>(s.data()), s.size(), &built);
    ok += built ? 1 : 0;
    return rc;
}

}  // namespace

int main(int argc, char **argv) {
    uint64_t runs = 0, seed = 1;
    size_t max_len = 4096;
    bool verbose = false;
    std::vector<std::filesystem::path> files;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (!std::strncmp(a, "-runs=", 6)) runs = std::strtoull(a + 6, nullptr, 10);
        else if (!std::strncmp(a, "-seed=", 6)) seed = std::strtoull(a + 6, nullptr, 10);
        else if (!std::strncmp(a, "-max_len=", 9)) max_len = std::strtoull(a + 9, nullptr, 10);
        else if (!std::strcmp(a, "-v")) verbose = true;
        else if (std::filesystem::is_directory(a)) {
            for (const auto &e : std::filesystem::directory_iterator(a))
                if (e.is_regular_file()) files.push_back(e.path());
        } else if (std::filesystem::is_regular_file(a)) {
            files.push_back(a);
        } else {
            fprintf(stderr, "spec_fuzz_driver: no such file or directory: %s\n", a);
            return 2;
        }
    }
    std::sort(files.begin(), files.end());  // deterministic order
    std::vector<std::string> seeds;
    for (const auto &f : files) {
        std::string s;
        if (!read_file(f, s)) {
            fprintf(stderr, "spec_fuzz_driver: cannot read %s\n", f.string().c_str());
            return 2;
        }
        seeds.push_back(s);
    }
    if (seeds.empty()) seeds.push_back("source | sink(write)");

    auto t0 = std::chrono::steady_clock::now();
    uint64_t ok = 0, execs = 0;
    for (size_t i = 0; i < seeds.size(); ++i) {
        int32_t rc = run(seeds[i], ok);
        ++execs;
        if (verbose)
            printf("%-40s %s\n", i < files.size() ? files[i].filename().string().c_str() : "-",
                   rc == 0 ? "built" : "refused");
    }
    uint64_t seed_ok = ok;
    g_state = seed;
    for (uint64_t n = 0; n < runs; ++n) {
        std::string s;
        if (below(4) == 0) {
            s = generate();
            if (below(2)) mutate(s, seeds, max_len);
        } else {
            s = seeds[below(seeds.size())];
            mutate(s, seeds, max_len);
        }
        run(s, ok);
        ++execs;
    }
    double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("spec_fuzz_driver: %zu seeds (%llu built), %llu runs, %llu executions in all, "
           "%llu built, %.2f s\n",
           seeds.size(), (unsigned long long)seed_ok, (unsigned long long)runs,
           (unsigned long long)execs, (unsigned long long)ok, secs);
    return 0;
}
