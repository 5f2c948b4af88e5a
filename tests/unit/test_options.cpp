// Options, schema builders, SourcePos and opt_value_str (core/src/options.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <toml++/toml.h>
#include <vector>

#include "weft/error.hpp"
#include "weft/options.hpp"

namespace {

weft::Options sample_options() {
  std::map<std::string, weft::Options::Entry> e;
  e["layers"] = {int64_t{12}, {"/r/recipe.toml", 4, 10}};
  e["lr"] = {3e-4, {"/r/base.toml", 7, 6}};
  e["width"] = {int64_t{768}, {}};  // an Int read as a float widens
  e["flash"] = {true, {"--set model.flash=true", 0, 0}};
  e["name"] = {std::string("gpt"), {}};
  e["files"] = {std::vector<std::string>{"a.txt", "b.txt"}, {"/r/recipe.toml", 9, 9}};
  return weft::Options("model", e, {"/r/recipe.toml", 3, 1});
}

std::string fail_message(const weft::Options& o, const std::string& key, const std::string& msg) {
  try {
    o.fail(key, msg);
  } catch (const weft::Error& e) {
    return e.what();
  }
  return "(no throw)";
}

// Parses `value` as the right-hand side of a TOML key.
toml::table parse_value(const std::string& literal) { return toml::parse("v = " + literal + "\n"); }

uint64_t bits(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

}  // namespace

TEST(Options, Getters) {
  weft::Options o = sample_options();
  EXPECT_EQ(o.section(), "model");
  EXPECT_EQ(o.section_pos().str(), "/r/recipe.toml:3:1");
  EXPECT_TRUE(o.has("layers"));
  EXPECT_FALSE(o.has("heads"));
  EXPECT_EQ(o.get_int("layers"), 12);
  EXPECT_EQ(o.get_float("lr"), 3e-4);
  EXPECT_EQ(o.get_float("width"), 768.0);
  EXPECT_TRUE(o.get_bool("flash"));
  EXPECT_EQ(o.get_string("name"), "gpt");
  EXPECT_EQ(o.get_strings("files"), (std::vector<std::string>{"a.txt", "b.txt"}));
  EXPECT_EQ(o.where("lr").str(), "/r/base.toml:7:6");
  EXPECT_FALSE(o.where("name").known());
  EXPECT_EQ(o.entries().size(), 6u);
}

TEST(Options, GetterOfWrongTypeOrMissingKeyIsAnInternalError) {
  weft::Options o = sample_options();
  EXPECT_THROW(o.get_int("lr"), std::bad_variant_access);
  EXPECT_THROW(o.get_string("layers"), std::bad_variant_access);
  EXPECT_ANY_THROW(o.get_int("heads"));  // asserts: a plugin asked for a key outside its schema
}

TEST(Options, FailMessageFormat) {
  weft::Options o = sample_options();
  EXPECT_EQ(fail_message(o, "layers", "must divide 5"), "/r/recipe.toml:4:10: model.layers: must divide 5");
  EXPECT_EQ(fail_message(o, "lr", "too big"), "/r/base.toml:7:6: model.lr: too big");
  // --set overrides have no line: the flag itself is the place.
  EXPECT_EQ(fail_message(o, "flash", "needs CUDA"), "--set model.flash=true: model.flash: needs CUDA");
  // A default has no place.
  EXPECT_EQ(fail_message(o, "name", "bad"), "model.name: bad");
  // A key outside the entries falls back to the section's position.
  EXPECT_EQ(fail_message(o, "heads", "missing"), "/r/recipe.toml:3:1: model.heads: missing");
  // No section name: the key alone.
  weft::Options bare("", {{"k", {int64_t{1}, {"f.toml", 1, 2}}}});
  EXPECT_EQ(fail_message(bare, "k", "m"), "f.toml:1:2: k: m");
  weft::Options empty;
  EXPECT_EQ(fail_message(empty, "k", "m"), "k: m");
}

TEST(SourcePos, Str) {
  EXPECT_EQ((weft::SourcePos{"a.toml", 3, 7}).str(), "a.toml:3:7");
  EXPECT_EQ((weft::SourcePos{"--set run.steps=3", 0, 0}).str(), "--set run.steps=3");
  EXPECT_EQ((weft::SourcePos{}).str(), "");
  EXPECT_FALSE((weft::SourcePos{}).known());
  EXPECT_TRUE((weft::SourcePos{"x", 0, 0}).known());
}

TEST(OptionSpec, Builders) {
  weft::OptionSpec i = weft::opt_int("layers", 2, "blocks", 1, 64);
  EXPECT_EQ(i.key, "layers");
  EXPECT_EQ(i.type, weft::OptType::Int);
  EXPECT_EQ(std::get<int64_t>(i.default_value), 2);
  EXPECT_EQ(i.doc, "blocks");
  EXPECT_EQ(*i.min, 1.0);
  EXPECT_EQ(*i.max, 64.0);
  EXPECT_FALSE(i.required);
  EXPECT_FALSE(i.auto_value);

  weft::OptionSpec f = weft::opt_float("lr", 1e-3, "rate", 0.0);
  EXPECT_EQ(f.type, weft::OptType::Float);
  EXPECT_EQ(std::get<double>(f.default_value), 1e-3);
  EXPECT_EQ(*f.min, 0.0);
  EXPECT_FALSE(f.max);

  weft::OptionSpec s = weft::opt_string("mode", "a", "m", {"a", "b"});
  EXPECT_EQ(s.type, weft::OptType::String);
  EXPECT_EQ(s.choices, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(s.is_path);

  weft::OptionSpec b = weft::opt_bool("on", true, "switch");
  EXPECT_EQ(b.type, weft::OptType::Bool);
  EXPECT_TRUE(std::get<bool>(b.default_value));

  weft::OptionSpec l = weft::opt_strings("sinks", {"x"}, "list");
  EXPECT_EQ(l.type, weft::OptType::StringList);
  EXPECT_FALSE(l.is_path);

  weft::OptionSpec p = weft::required(weft::opt_path("file", "", "a file"));
  EXPECT_EQ(p.type, weft::OptType::String);
  EXPECT_TRUE(p.is_path);
  EXPECT_TRUE(p.required);
  weft::OptionSpec ps = weft::opt_paths("files", {}, "files");
  EXPECT_EQ(ps.type, weft::OptType::StringList);
  EXPECT_TRUE(ps.is_path);

  EXPECT_STREQ(weft::opt_type_name(weft::OptType::Bool), "boolean");
  EXPECT_STREQ(weft::opt_type_name(weft::OptType::Int), "integer");
  EXPECT_STREQ(weft::opt_type_name(weft::OptType::Float), "float");
  EXPECT_STREQ(weft::opt_type_name(weft::OptType::String), "string");
  EXPECT_STREQ(weft::opt_type_name(weft::OptType::StringList), "array of strings");
}

TEST(OptValueStr, Literals) {
  EXPECT_EQ(weft::opt_value_str(true), "true");
  EXPECT_EQ(weft::opt_value_str(false), "false");
  EXPECT_EQ(weft::opt_value_str(int64_t{-42}), "-42");
  EXPECT_EQ(weft::opt_value_str(std::numeric_limits<int64_t>::max()), "9223372036854775807");
  EXPECT_EQ(weft::opt_value_str(1.0), "1.0");
  EXPECT_EQ(weft::opt_value_str(-0.0), "-0.0");
  EXPECT_EQ(weft::opt_value_str(0.5), "0.5");
  EXPECT_EQ(weft::opt_value_str(100.0), "100.0");
  // Shortest form that reads back: 15 digits where they suffice, up to 17.
  EXPECT_EQ(weft::opt_value_str(0.1), "0.1");
  EXPECT_EQ(weft::opt_value_str(6e-4), "0.0006");
  EXPECT_EQ(weft::opt_value_str(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(weft::opt_value_str(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(weft::opt_value_str(1e16), "1e+16");
  EXPECT_EQ(weft::opt_value_str(1e300), "1e+300");
  EXPECT_EQ(weft::opt_value_str(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(weft::opt_value_str(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(weft::opt_value_str(std::nan("")), "nan");
  EXPECT_EQ(weft::opt_value_str(std::string("plain")), "\"plain\"");
  EXPECT_EQ(weft::opt_value_str(std::string("a\"b\\c\nd\te\x01" "f\x7f")), "\"a\\\"b\\\\c\\u000ad\\u0009e\\u0001f\\u007f\"");
  EXPECT_EQ(weft::opt_value_str(std::vector<std::string>{}), "[]");
  EXPECT_EQ(weft::opt_value_str(std::vector<std::string>{"a", "b\"c"}), "[\"a\", \"b\\\"c\"]");
}

TEST(OptValueStr, IntegersReadBackExactly) {
  for (int64_t v : {int64_t{0}, int64_t{1}, int64_t{-1}, int64_t{1} << 53, (int64_t{1} << 53) + 1,
                    std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()}) {
    toml::table t = parse_value(weft::opt_value_str(v));
    ASSERT_TRUE(t["v"].is_integer()) << v;
    EXPECT_EQ(t["v"].value<int64_t>(), v);
  }
}

TEST(OptValueStr, FloatsReadBackBitExactly) {
  std::vector<double> values = {0.0,
                                -0.0,
                                1.0,
                                0.1,
                                1.0 / 3.0,
                                6e-4,
                                0.95,
                                1e-8,
                                2.5e-310,  // subnormal
                                std::numeric_limits<double>::denorm_min(),
                                std::numeric_limits<double>::min(),
                                std::numeric_limits<double>::max(),
                                std::numeric_limits<double>::epsilon(),
                                -123456789.123456789,
                                9007199254740993.0,
                                1e16,
                                1e22,
                                1e-300,
                                std::numeric_limits<double>::infinity(),
                                -std::numeric_limits<double>::infinity()};
  // And a sweep of awkward values: k / 7 * 10^e.
  for (int e = -30; e <= 30; e += 3)
    for (int k = 1; k < 7; ++k) values.push_back(k / 7.0 * std::pow(10.0, e));
  for (double v : values) {
    std::string lit = weft::opt_value_str(v);
    toml::table t;
    ASSERT_NO_THROW(t = parse_value(lit)) << lit;
    ASSERT_TRUE(t["v"].is_floating_point()) << lit << " must stay a float in TOML";
    EXPECT_EQ(bits(*t["v"].value<double>()), bits(v)) << lit;
  }
  toml::table t = parse_value(weft::opt_value_str(std::nan("")));
  EXPECT_TRUE(std::isnan(*t["v"].value<double>()));
}

TEST(OptValueStr, StringsReadBackAsValidToml) {
  std::vector<std::string> values = {"",
                                     "plain",
                                     "with \"quotes\"",
                                     "back\\slash\\",
                                     "C:\\path\\to\\file",
                                     "tab\there",
                                     "new\nline\r\n",
                                     std::string("nul\0byte", 8),
                                     "\x01\x02\x1b[31mred\x1b[0m\x1f\x7f",
                                     "'single'",
                                     "\"\"\"triple\"\"\"",
                                     "unicode: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
                                     "# not a comment",
                                     "trailing backslash \\"};
  std::string all;
  for (int c = 1; c < 128; ++c) all += static_cast<char>(c);
  values.push_back(all);
  for (const std::string& v : values) {
    std::string lit = weft::opt_value_str(v);
    EXPECT_EQ(lit.find('\n'), std::string::npos) << "literal must be one line: " << lit;
    toml::table t;
    ASSERT_NO_THROW(t = parse_value(lit)) << lit;
    ASSERT_TRUE(t["v"].is_string()) << lit;
    EXPECT_EQ(*t["v"].value<std::string>(), v) << lit;
  }
  toml::table t = parse_value(weft::opt_value_str(values));
  ASSERT_TRUE(t["v"].is_array());
  const toml::array& arr = *t["v"].as_array();
  ASSERT_EQ(arr.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(*arr[i].value<std::string>(), values[i]) << i;
}

TEST(OptValueStr, BoolsReadBack) {
  for (bool b : {true, false}) {
    toml::table t = parse_value(weft::opt_value_str(b));
    ASSERT_TRUE(t["v"].is_boolean());
    EXPECT_EQ(*t["v"].value<bool>(), b);
  }
}
