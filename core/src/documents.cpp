#include "weft/documents.hpp"

namespace weft {

OptionSchema document_mask_options() {
  return {
      opt_bool("eod_mask_loss", false, "no loss on the token after each end-of-text (Megatron's --eod-mask-loss)"),
      opt_bool("reset_position_ids", false, "positions restart at 0 after each end-of-text token"),
      opt_bool("reset_attention_mask", false, "attention does not cross end-of-text tokens (documents see only themselves)"),
  };
}

DocumentMasks document_masks(const Options& data) {
  auto flag = [&](const char* key) { return data.has(key) && data.get_bool(key); };
  return {flag("eod_mask_loss"), flag("reset_position_ids"), flag("reset_attention_mask")};
}

int64_t apply_document_masks(const DocumentMasks& masks, int32_t eot, const int32_t* ids, int32_t* targets,
                             int32_t* doc_start, int32_t* positions, int64_t t) {
  int64_t counted = 0;
  int32_t start = 0;  // first position of the current document
  for (int64_t i = 0; i < t; ++i) {
    const int32_t pos = static_cast<int32_t>(i);
    doc_start[i] = masks.reset_attention_mask ? start : 0;
    positions[i] = masks.reset_position_ids ? pos - start : pos;
    if (masks.eod_mask_loss && ids[i] == eot) targets[i] = -1;
    if (targets[i] >= 0) ++counted;
    if (ids[i] == eot) start = pos + 1;  // the eot closes its document; the next token starts one
  }
  return counted;
}

}  // namespace weft
