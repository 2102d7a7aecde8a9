// Spec parser: a hand-written lexer and recursive-descent parser (one token of look-ahead).
// Every error names the position and what was expected; nothing here can crash on any input
// (depth, token and number lengths are bounded; the fuzz target checks it).
#include "spec/spec_parser.hpp"

#include <cctype>
#include <cstdio>

namespace fluxus {

namespace {

enum class Tok { end, word, number, lparen, rparen, lbrace, rbrace, pipe, comma, colon, semi,
                 equals, at, bad };

struct Token {
    Tok kind = Tok::end;
    std::string text;
    SpecPos pos;
};

const char *tok_name(Tok t) {
    switch (t) {
    case Tok::end: return "the end of the spec";
    case Tok::word: return "a name";
    case Tok::number: return "a number";
    case Tok::lparen: return "'('";
    case Tok::rparen: return "')'";
    case Tok::lbrace: return "'{'";
    case Tok::rbrace: return "'}'";
    case Tok::pipe: return "'|'";
    case Tok::comma: return "','";
    case Tok::colon: return "':'";
    case Tok::semi: return "';'";
    case Tok::equals: return "'='";
    case Tok::at: return "'@'";
    case Tok::bad: return "an unexpected character";
    }
    return "?";
}

class Parser {
public:
    explicit Parser(const char *text) : s_(text) { advance(); }

    bool parse(std::vector<SpecChain> &out, std::string &error) {
        for (;;) {
            out.emplace_back();
            if (!chain(out.back(), 0)) {
                error = error_;
                return false;
            }
            if (tok_.kind != Tok::semi) break;
            advance();
            if (tok_.kind == Tok::end) break;  // a trailing ';'
        }
        if (tok_.kind != Tok::end) {
            fail_expected("'|', ';' or the end of the spec");
            error = error_;
            return false;
        }
        return true;
    }

private:
    // ---- lexer ----
    void skip_space() {
        for (;;) {
            char c = s_[i_];
            if (c == '\n') {
                ++line_;
                col_ = 1;
                ++i_;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                ++col_;
                ++i_;
            } else if (c == '#') {
                while (s_[i_] && s_[i_] != '\n') ++i_;
            } else {
                return;
            }
        }
    }

    void advance() {
        skip_space();
        tok_.pos = SpecPos{line_, col_};
        tok_.text.clear();
        char c = s_[i_];
        if (c == '\0') {
            tok_.kind = Tok::end;
            return;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            while (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '_') take();
            tok_.kind = tok_.text.size() <= 128 ? Tok::word : Tok::bad;
            return;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
            while (std::isdigit(static_cast<unsigned char>(s_[i_]))) take();
            tok_.kind = tok_.text.size() <= 20 ? Tok::number : Tok::bad;
            return;
        }
        take();
        switch (c) {
        case '(': tok_.kind = Tok::lparen; break;
        case ')': tok_.kind = Tok::rparen; break;
        case '{': tok_.kind = Tok::lbrace; break;
        case '}': tok_.kind = Tok::rbrace; break;
        case '|': tok_.kind = Tok::pipe; break;
        case ',': tok_.kind = Tok::comma; break;
        case ':': tok_.kind = Tok::colon; break;
        case ';': tok_.kind = Tok::semi; break;
        case '=': tok_.kind = Tok::equals; break;
        case '@': tok_.kind = Tok::at; break;
        default: tok_.kind = Tok::bad; break;
        }
    }

    void take() {
        tok_.text.push_back(s_[i_]);
        ++i_;
        ++col_;
    }

    // ---- errors ----
    bool fail_at(SpecPos pos, const std::string &what) {
        if (error_.empty()) {
            char head[48];
            snprintf(head, sizeof head, "spec:%u:%u: ", pos.line, pos.col);
            error_ = head + what;
        }
        return false;
    }

    // A stray byte, quoted if it is printable ASCII, else by value: the message must stay
    // valid UTF-8 (fluxus_last_error_copy() promises it), and a lone byte of a multi-byte
    // character or a control character quoted as it is would not be, or would not show.
    static std::string unexpected(unsigned char c) {
        char buf[48];
        if (c > 0x20 && c < 0x7f)
            snprintf(buf, sizeof buf, "an unexpected character '%c'", c);
        else
            snprintf(buf, sizeof buf, "an unexpected byte 0x%02X", c);
        return buf;
    }

    bool fail_expected(const char *what) {
        std::string found = tok_name(tok_.kind);
        if (tok_.kind == Tok::word || tok_.kind == Tok::number)
            found += " '" + tok_.text + "'";
        else if (tok_.kind == Tok::bad && tok_.text.size() > 20)
            found = "a name or number too long";
        else if (tok_.kind == Tok::bad && !tok_.text.empty())
            found = unexpected(static_cast<unsigned char>(tok_.text[0]));
        return fail_at(tok_.pos, std::string("expected ") + what + ", found " + found);
    }

    bool expect(Tok t, const char *what) {
        if (tok_.kind != t) return fail_expected(what);
        advance();
        return true;
    }

    // ---- grammar ----
    bool chain(SpecChain &out, int depth) {
        if (depth > kSpecMaxDepth)
            return fail_at(tok_.pos, "branches nested too deep (at most 64 levels)");
        for (;;) {
            out.steps.emplace_back();
            if (!step(out.steps.back(), depth)) return false;
            if (tok_.kind != Tok::pipe) return true;
            advance();
        }
    }

    bool step(SpecStep &st, int depth) {
        st.pos = tok_.pos;
        if (tok_.kind == Tok::at) {
            advance();
            st.merge = true;
            if (tok_.kind != Tok::word) return fail_expected("the name of a stage after '@'");
            st.kind = tok_.text;
            advance();
            return true;
        }
        if (tok_.kind != Tok::word) return fail_expected("a stage (a kind such as map, or a name)");
        st.kind = tok_.text;
        advance();
        if (tok_.kind == Tok::lparen) {
            advance();
            if (tok_.kind != Tok::rparen) {
                for (;;) {
                    st.args.emplace_back();
                    if (!arg(st.args.back())) return false;
                    if (tok_.kind != Tok::comma) break;
                    advance();
                }
            }
            if (!expect(Tok::rparen, "',' or ')' after an argument")) return false;
        }
        if (tok_.kind == Tok::word && tok_.text == "as") {
            advance();
            st.alias_pos = tok_.pos;
            if (tok_.kind != Tok::word) return fail_expected("a stage name after 'as'");
            st.alias = tok_.text;
            advance();
        }
        if (tok_.kind == Tok::lbrace) {
            advance();
            st.has_block = true;
            while (tok_.kind != Tok::rbrace) {
                SpecBranch b;
                b.pos = tok_.pos;
                if (tok_.kind != Tok::word) return fail_expected("a label ('error:' or a route) or '}'");
                b.label = tok_.text;
                advance();
                if (!expect(Tok::colon, "':' after the label")) return false;
                if (!chain(b.chain, depth + 1)) return false;
                st.block.push_back(std::move(b));
                if (tok_.kind == Tok::semi || tok_.kind == Tok::comma) advance();
            }
            advance();
        }
        return true;
    }

    bool arg(SpecArg &a) {
        a.pos = tok_.pos;
        if (tok_.kind == Tok::number) {
            a.value = tok_.text;
            a.number = true;
            advance();
            return true;
        }
        if (tok_.kind != Tok::word) return fail_expected("an argument (a name, or option=value)");
        std::string first = tok_.text;
        advance();
        if (tok_.kind != Tok::equals) {
            a.value = first;
            return true;
        }
        advance();
        a.key = first;
        if (tok_.kind != Tok::word && tok_.kind != Tok::number)
            return fail_expected("a value (a number or a name) after '='");
        a.number = tok_.kind == Tok::number;
        a.value = tok_.text;
        advance();
        return true;
    }

    const char *s_;
    size_t i_ = 0;
    uint32_t line_ = 1, col_ = 1;
    Token tok_;
    std::string error_;
};

}  // namespace

bool parse_spec(const char *text, std::vector<SpecChain> &out, std::string &error) {
    Parser p(text);
    return p.parse(out, error);
}

}  // namespace fluxus
