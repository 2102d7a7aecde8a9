// Unit tests of the spec parser (the grammar documented with fluxus_pipeline_build()): the tree
// it builds with positions, and the exact "spec:LINE:COL: ..." message of the first error for
// each kind of mistake, including the length and depth bounds.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <string>
#include <vector>

#include "spec/spec_parser.hpp"

using fluxus::SpecChain;
using fluxus::SpecStep;
using fluxus::parse_spec;

namespace {

std::vector<SpecChain> parse_ok(const std::string &text) {
    std::vector<SpecChain> out;
    std::string error;
    bool ok = parse_spec(text.c_str(), out, error);
    if (!ok) fail_msg("unexpected error: %s", error.c_str());
    assert_true(error.empty());
    return out;
}

std::string parse_error(const std::string &text) {
    std::vector<SpecChain> out;
    std::string error;
    assert_false(parse_spec(text.c_str(), out, error));
    return error;
}

#define assert_error(text, want) assert_string_equal(parse_error(text).c_str(), want)

void test_chain_of_steps_with_positional_arguments(void **) {
    auto chains = parse_ok("source | map(parse) | sink(write)");
    assert_int_equal(chains.size(), 1);
    const auto &s = chains[0].steps;
    assert_int_equal(s.size(), 3);
    assert_string_equal(s[0].kind.c_str(), "source");
    assert_int_equal(s[0].args.size(), 0);
    assert_false(s[0].has_block);
    assert_string_equal(s[1].kind.c_str(), "map");
    assert_int_equal(s[1].pos.col, 10);
    assert_int_equal(s[1].args.size(), 1);
    assert_true(s[1].args[0].key.empty());
    assert_string_equal(s[1].args[0].value.c_str(), "parse");
    assert_false(s[1].args[0].number);
    assert_int_equal(s[1].args[0].pos.col, 14);
    assert_string_equal(s[2].args[0].value.c_str(), "write");
}

void test_options_take_names_or_numbers(void **) {
    auto chains = parse_ok("map(f, workers=4, order=unordered, 7, retry_if=again)");
    const auto &a = chains[0].steps[0].args;
    assert_int_equal(a.size(), 5);
    assert_string_equal(a[1].key.c_str(), "workers");
    assert_string_equal(a[1].value.c_str(), "4");
    assert_true(a[1].number);
    assert_int_equal(a[1].pos.col, 8);  // the option's name
    assert_string_equal(a[2].key.c_str(), "order");
    assert_string_equal(a[2].value.c_str(), "unordered");
    assert_false(a[2].number);
    assert_true(a[3].key.empty());
    assert_string_equal(a[3].value.c_str(), "7");
    assert_true(a[3].number);
    assert_string_equal(a[4].value.c_str(), "again");
}

void test_empty_parentheses_mean_no_arguments(void **) {
    auto chains = parse_ok("source() | sink(x)");
    assert_int_equal(chains[0].steps[0].args.size(), 0);
}

void test_as_names_a_stage_and_at_merges_into_one(void **) {
    auto chains = parse_ok("sink(write) as store; source(more) | @store");
    assert_int_equal(chains.size(), 2);
    const SpecStep &named = chains[0].steps[0];
    assert_string_equal(named.alias.c_str(), "store");
    assert_int_equal(named.alias_pos.col, 16);
    const SpecStep &merge = chains[1].steps[1];
    assert_true(merge.merge);
    assert_string_equal(merge.kind.c_str(), "store");
    assert_int_equal(merge.pos.col, 38);  // the '@'
    assert_false(chains[1].steps[0].merge);
}

void test_blocks_hold_labelled_chains_and_the_chain_goes_on_after(void **) {
    auto chains = parse_ok(
        "router(by_kind) { click: map(enrich) | @store ; view: sink(count), other: sink(x) "
        "last: sink(y) } | sink(z)");
    const auto &s = chains[0].steps;
    assert_int_equal(s.size(), 2);
    assert_true(s[0].has_block);
    const auto &b = s[0].block;
    assert_int_equal(b.size(), 4);  // separated by ';', ',' or nothing
    assert_string_equal(b[0].label.c_str(), "click");
    assert_int_equal(b[0].pos.col, 19);
    assert_int_equal(b[0].chain.steps.size(), 2);
    assert_true(b[0].chain.steps[1].merge);
    assert_string_equal(b[1].label.c_str(), "view");
    assert_string_equal(b[2].label.c_str(), "other");
    assert_string_equal(b[3].label.c_str(), "last");
    assert_string_equal(s[1].kind.c_str(), "sink");
}

void test_an_empty_block_is_a_block(void **) {
    auto chains = parse_ok("map(f) {} | sink(x)");
    assert_true(chains[0].steps[0].has_block);
    assert_int_equal(chains[0].steps[0].block.size(), 0);
}

void test_chains_are_separated_by_semicolons_and_a_trailing_one_is_allowed(void **) {
    assert_int_equal(parse_ok("a ; b ; c").size(), 3);
    assert_int_equal(parse_ok("a ; b ;").size(), 2);
}

void test_comments_and_newlines_are_spaces_and_positions_follow_lines(void **) {
    auto chains = parse_ok("# a comment | not parsed\nsource\n\t| map(f) # trailing\n  | sink(g)");
    const auto &s = chains[0].steps;
    assert_int_equal(s.size(), 3);
    assert_int_equal(s[0].pos.line, 2);
    assert_int_equal(s[0].pos.col, 1);
    assert_int_equal(s[1].pos.line, 3);
    assert_int_equal(s[1].pos.col, 4);  // a tab is one column
    assert_int_equal(s[2].pos.line, 4);
    assert_int_equal(s[2].pos.col, 5);
}

void test_names_and_numbers_at_their_length_limits(void **) {
    std::string name(128, 'n'), number(20, '9');
    auto chains = parse_ok("map(" + name + ", x=" + number + ")");
    assert_string_equal(chains[0].steps[0].args[0].value.c_str(), name.c_str());
    assert_string_equal(chains[0].steps[0].args[1].value.c_str(), number.c_str());
    assert_error("map(" + name + "n)", "spec:1:5: expected an argument (a name, or option=value), "
                                        "found a name or number too long");
    assert_error("map(x=" + number + "9)",
                 "spec:1:7: expected a value (a number or a name) after '=', found a name or "
                 "number too long");
}

void test_empty_spec_is_an_error(void **) {
    assert_error("", "spec:1:1: expected a stage (a kind such as map, or a name), found the end "
                     "of the spec");
    assert_error("  # only a comment\n",
                 "spec:2:1: expected a stage (a kind such as map, or a name), found the end of "
                 "the spec");
    assert_error(";", "spec:1:1: expected a stage (a kind such as map, or a name), found ';'");
}

void test_each_syntax_error_names_its_position_and_what_was_expected(void **) {
    assert_error("map | ", "spec:1:7: expected a stage (a kind such as map, or a name), found the "
                           "end of the spec");
    assert_error("a ;; b", "spec:1:4: expected a stage (a kind such as map, or a name), found ';'");
    assert_error("map(", "spec:1:5: expected an argument (a name, or option=value), found the end "
                         "of the spec");
    assert_error("map(a b)", "spec:1:7: expected ',' or ')' after an argument, found a name 'b'");
    assert_error("map(a,)", "spec:1:7: expected an argument (a name, or option=value), found ')'");
    assert_error("map(x=)", "spec:1:7: expected a value (a number or a name) after '=', found ')'");
    assert_error("map(x=|)", "spec:1:7: expected a value (a number or a name) after '=', found "
                             "'|'");
    assert_error("map as", "spec:1:7: expected a stage name after 'as', found the end of the spec");
    assert_error("map as 5", "spec:1:8: expected a stage name after 'as', found a number '5'");
    assert_error("@", "spec:1:2: expected the name of a stage after '@', found the end of the spec");
    assert_error("a | @ 1", "spec:1:7: expected the name of a stage after '@', found a number '1'");
    assert_error("map $", "spec:1:5: expected '|', ';' or the end of the spec, found an unexpected "
                          "character '$'");
    assert_error("map(f) sink", "spec:1:8: expected '|', ';' or the end of the spec, found a name "
                                "'sink'");
    assert_error("a | 12", "spec:1:5: expected a stage (a kind such as map, or a name), found a "
                           "number '12'");
    assert_error("r { x map }", "spec:1:7: expected ':' after the label, found a name 'map'");
    assert_error("r {", "spec:1:4: expected a label ('error:' or a route) or '}', found the end of "
                        "the spec");
    assert_error("r { : a }", "spec:1:5: expected a label ('error:' or a route) or '}', found "
                              "':'");
    assert_error("r { x: }", "spec:1:8: expected a stage (a kind such as map, or a name), found "
                             "'}'");
    assert_error("a }", "spec:1:3: expected '|', ';' or the end of the spec, found '}'");
}

void test_errors_on_later_lines_name_that_line(void **) {
    assert_error("source\n  | map(f,\n        =3)",
                 "spec:3:9: expected an argument (a name, or option=value), found '='");
}

void test_bytes_outside_printable_ascii_are_named_by_value(void **) {
    // The message stays valid UTF-8: not the lone first byte of the 'é'.
    assert_error("map(\xc3\xa9)", "spec:1:5: expected an argument (a name, or option=value), found "
                                  "an unexpected byte 0xC3");
    assert_error("map(f)\x01", "spec:1:7: expected '|', ';' or the end of the spec, found an "
                               "unexpected byte 0x01");
    assert_error("map(f)\x7f", "spec:1:7: expected '|', ';' or the end of the spec, found an "
                               "unexpected byte 0x7F");
    assert_error("map(f)~", "spec:1:7: expected '|', ';' or the end of the spec, found an "
                            "unexpected character '~'");
}

std::string nested(int depth) {
    std::string s = "a";
    for (int i = 0; i < depth; ++i) s += " { x: a";
    for (int i = 0; i < depth; ++i) s += " }";
    return s;
}

void test_blocks_nest_up_to_sixty_four_levels(void **) {
    auto chains = parse_ok(nested(64));
    const SpecStep *st = &chains[0].steps[0];
    int levels = 0;
    while (st->has_block) {
        st = &st->block[0].chain.steps[0];
        ++levels;
    }
    assert_int_equal(levels, 64);
    // The 65th level is refused where its chain starts.
    std::string err = parse_error(nested(65));
    std::string want = "spec:1:" + std::to_string(1 + 65 * 7) +
                       ": branches nested too deep (at most 64 levels)";
    assert_string_equal(err.c_str(), want.c_str());
    // Far deeper input fails the same way, without exhausting the stack.
    std::string deep = "a";
    for (int i = 0; i < 100000; ++i) deep += "{x:a";
    assert_true(parse_error(deep).find("nested too deep") != std::string::npos);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_of_steps_with_positional_arguments),
        cmocka_unit_test(test_options_take_names_or_numbers),
        cmocka_unit_test(test_empty_parentheses_mean_no_arguments),
        cmocka_unit_test(test_as_names_a_stage_and_at_merges_into_one),
        cmocka_unit_test(test_blocks_hold_labelled_chains_and_the_chain_goes_on_after),
        cmocka_unit_test(test_an_empty_block_is_a_block),
        cmocka_unit_test(test_chains_are_separated_by_semicolons_and_a_trailing_one_is_allowed),
        cmocka_unit_test(test_comments_and_newlines_are_spaces_and_positions_follow_lines),
        cmocka_unit_test(test_names_and_numbers_at_their_length_limits),
        cmocka_unit_test(test_empty_spec_is_an_error),
        cmocka_unit_test(test_each_syntax_error_names_its_position_and_what_was_expected),
        cmocka_unit_test(test_errors_on_later_lines_name_that_line),
        cmocka_unit_test(test_bytes_outside_printable_ascii_are_named_by_value),
        cmocka_unit_test(test_blocks_nest_up_to_sixty_four_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
