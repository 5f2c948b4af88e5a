// Observability pieces on their own: the console line and its warnings, the
// TensorBoard record framing against CRC-32C's published check value, MFU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "console_sink.hpp"
#include "step_timers.hpp"
#include "tb_events.hpp"

namespace {

TEST(ConsoleLine, EveryFieldFitsIn120Columns) {
  weft::ConsoleSink sink({"", 0, 1});
  weft::MetricsRecord r;
  r.step = 1;
  r.total_steps = 10000000;  // ten million steps of 100 s: the ETA is in days
  r.values = {{"loss", 10.12345}, {"lr", 6e-4},      {"grad_norm", 12345.678}, {"tokens_per_s", 12345678.9},
              {"mfu", 0.4567},    {"step_ms", 99999.9}, {"mem_param_bytes", 123.0 * (1 << 30)}};
  const std::string line = sink.format(r);
  EXPECT_LE(line.size(), 120u) << line;
  EXPECT_NE(line.find("| mfu 45.7% |"), std::string::npos) << line;
  for (const char* part : {"loss 10.1235", "lr 6.0e-04", "gnorm 1.23e+04", "12.35M tok/s", "mem 123.0 GiB",
                           "ETA 11574d01h"})
    EXPECT_NE(line.find(part), std::string::npos) << part << " in " << line;
  EXPECT_EQ(weft::format_duration(90000), "1d01h");
}

TEST(ConsoleLine, WarnsOnNanLossAndOnSpikes) {
  weft::ConsoleSink sink({"", 0, 1}, 3.0);
  weft::MetricsRecord r;
  auto at = [&](int64_t step, double loss) {
    r.step = step;
    r.values = {{"loss", loss}};
    return sink.warning(r);
  };
  EXPECT_EQ(at(1, 2.0), "");
  EXPECT_EQ(at(2, 9.0), "");  // no mean of three records yet
  EXPECT_EQ(at(3, 1.0), "");
  // mean of 2, 9, 1 = 4: 11.9 is below 3x; then 30 over the mean of four, 5.975
  EXPECT_EQ(at(4, 11.9), "");
  EXPECT_EQ(at(5, 30.0), "step 5: loss spike: 30.0000 is 5.0x the mean 5.9750 of the last 4 records");
  EXPECT_EQ(at(6, std::nan("")), "step 6: loss is NaN");
  EXPECT_EQ(at(7, INFINITY), "step 7: loss is infinite");
  weft::ConsoleSink quiet({"", 0, 1}, 0.0);  // spike_factor 0: only non-finite losses warn
  for (int s = 1; s <= 4; ++s) {
    r.step = s;
    r.values = {{"loss", s == 4 ? 1e6 : 1.0}};
    EXPECT_EQ(quiet.warning(r), "");
  }
}

TEST(TensorboardRecords, Crc32cMatchesTheCheckValue) {
  // CRC-32C/ISCSI check value from the CRC catalogue: CRC of "123456789".
  EXPECT_EQ(weft::tb::crc32c("123456789", 9), 0xE3069283u);
  // RFC 3720 B.4: 32 bytes of zeros.
  const char zeros[32] = {};
  EXPECT_EQ(weft::tb::crc32c(zeros, 32), 0x8A9136AAu);
}

TEST(TensorboardRecords, FramingRoundTripsAndATornTailIsDropped) {
  const std::string a = weft::tb::scalars_event(1.5, 7, {{"loss", 2.5}});
  const std::string b = weft::tb::scalars_event(2.5, 8, {{"loss", 2.25}, {"lr", 1e-3}});
  std::string file = weft::tb::record(weft::tb::file_version_event(1.0)) + weft::tb::record(a) + weft::tb::record(b);
  // Length 8 bytes little-endian, then its masked CRC.
  uint64_t len = 0;
  std::memcpy(&len, file.data(), 8);
  EXPECT_EQ(len, weft::tb::file_version_event(1.0).size());
  auto recs = weft::tb::read_records(file);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[1], a);
  EXPECT_EQ(weft::tb::parse_event(recs[2]).step, 8);
  EXPECT_TRUE(weft::tb::parse_event(recs[2]).has_summary);
  EXPECT_FALSE(weft::tb::parse_event(recs[0]).has_summary);
  file.resize(file.size() - 3);  // a crash mid-write
  EXPECT_EQ(weft::tb::read_records(file).size(), 2u);
  file[20] ^= 1;  // a flipped bit in the first record's data
  EXPECT_EQ(weft::tb::read_records(file).size(), 0u);
}

TEST(Mfu, HandComputedForTheTinyGpt) {
  // gpt-tiny: L=4, C=128, T=64, vocabulary 257 padded to 320.
  const double N = 320 * 128 + 64 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 2 * 128;  // 842496
  const double flops = 6 * (N - 64 * 128) + 6 * 4 * 64 * 128;                       // 5202432
  EXPECT_EQ(flops, 5202432);
  // 10,000 tokens/s on 2 ranks of 0.5 TFLOP/s each: 5.202432e10 / 1e12.
  EXPECT_DOUBLE_EQ(weft::model_flops_utilization(10000, flops, 0.5, 2), 0.05202432);
  EXPECT_EQ(weft::model_flops_utilization(10000, flops, 0, 2), 0);  // unknown peak
}

}  // namespace
