// The TensorBoard event-file format, written by hand: TensorBoard reads a
// sequence of records
//   uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
// (little-endian) whose data is a serialized tensorflow.Event protobuf. weft
// writes three Event fields (wall_time = 1, step = 2, file_version = 3,
// summary = 5) and, inside the Summary, repeated Value {tag = 1,
// simple_value = 2}. That is a few dozen lines, so neither protoc-generated
// code nor libprotobuf is linked, and CRC-32C (Castagnoli) is computed from
// its polynomial: the plugin depends on nothing TensorBoard-specific.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace weft::tb {

uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

// One framed record around `data`.
std::string record(const std::string& data);

// Serialized Events.
std::string file_version_event(double wall_time);
std::string scalars_event(double wall_time, int64_t step,
                          const std::vector<std::pair<std::string, double>>& scalars);

// The records of an event file's bytes, each checked against both CRCs; a
// torn or damaged tail (a crash mid-write) ends the list.
std::vector<std::string> read_records(const std::string& bytes);
// The Event's step field (0 when absent) and whether it has a summary.
struct EventInfo {
  int64_t step = 0;
  bool has_summary = false;
};
EventInfo parse_event(const std::string& data);

}  // namespace weft::tb
