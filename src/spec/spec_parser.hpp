// Spec parser: the text of a declarative pipeline into a tree of chains and steps, each with
// its position, or the first syntax error as "spec:LINE:COL: ...". Builds nothing; see
// spec_builder.cpp. The grammar is documented with fluxus_pipeline_build() in fluxus.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fluxus {

struct SpecPos {
    uint32_t line = 1, col = 1;
};

struct SpecArg {
    SpecPos pos;
    std::string key;    // empty for a positional argument
    std::string value;  // a word or the digits of a number
    bool number = false;
};

struct SpecStep;

struct SpecChain {
    std::vector<SpecStep> steps;
};

struct SpecBranch {
    SpecPos pos;
    std::string label;
    SpecChain chain;
};

struct SpecStep {
    SpecPos pos;
    std::string kind;   // a stage kind, or a registered name (bare step)
    bool merge = false; // '@' NAME: kind holds NAME
    std::vector<SpecArg> args;
    std::string alias;  // 'as' NAME
    SpecPos alias_pos;
    bool has_block = false;
    std::vector<SpecBranch> block;
};

// Parses `text`: chains separated by ';'. Returns true, or false with `error` set
// ("spec:LINE:COL: ...").
bool parse_spec(const char *text, std::vector<SpecChain> &out, std::string &error);

// Chains nest through blocks; deeper specs are refused (stack safety under fuzzing).
constexpr int kSpecMaxDepth = 64;

}  // namespace fluxus
