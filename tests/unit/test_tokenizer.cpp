// Tokenizer "byte": ids 0..255 are bytes, 256 is end-of-text.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "byte_tokenizer.hpp"
#include "weft/error.hpp"

namespace {

TEST(ByteTokenizer, VocabAndEot) {
  weft::ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 257);
  EXPECT_EQ(tok.eot(), 256);
}

TEST(ByteTokenizer, EncodesBytesAsTheirValues) {
  weft::ByteTokenizer tok;
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(tok.encode("Hi!"), (std::vector<int32_t>{72, 105, 33}));
  // Non-ASCII bytes are unsigned: UTF-8 "é" is C3 A9.
  EXPECT_EQ(tok.encode("\xc3\xa9"), (std::vector<int32_t>{0xC3, 0xA9}));
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  weft::ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  all += std::string("\0\xff\x80 tail", 8);
  std::vector<int32_t> ids = tok.encode(all);
  ASSERT_EQ(ids.size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(all[i])) << i;
  EXPECT_EQ(tok.decode(ids), all);

  std::vector<int32_t> every(256);
  for (int b = 0; b < 256; ++b) every[b] = b;
  EXPECT_EQ(tok.encode(tok.decode(every)), every);
}

TEST(ByteTokenizer, RoundTripsEot) {
  weft::ByteTokenizer tok;
  const std::vector<int32_t> ids = {97, 256, 98, 256, 256, 0, 255};
  const std::string text = tok.decode(ids);
  EXPECT_EQ(text, std::string("a<|endoftext|>b<|endoftext|><|endoftext|>\0\xff", 43));
  EXPECT_EQ(tok.encode(text), ids);
  // A partial marker stays bytes.
  EXPECT_EQ(tok.encode("<|endoftext|"), (std::vector<int32_t>{60, 124, 101, 110, 100, 111, 102, 116, 101, 120,
                                                               116, 124}));
}

TEST(ByteTokenizer, RejectsIdsOutsideTheVocabulary) {
  weft::ByteTokenizer tok;
  EXPECT_THROW(tok.decode({1, 257}), weft::Error);
  EXPECT_THROW(tok.decode({-1}), weft::Error);
}

}  // namespace
