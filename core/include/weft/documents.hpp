// Document-aware batches, Megatron-LM's --eod-mask-loss, --reset-position-ids
// and --reset-attention-mask: a sample of T tokens may hold several documents
// separated by the end-of-text token (eot). Every data plugin accepts the three
// [data] keys (document_mask_options); the trainer applies them to each sample.
#pragma once

#include <cstdint>

#include "weft/options.hpp"

namespace weft {

struct DocumentMasks {
  bool eod_mask_loss = false;         // no loss where the input token is eot (the prediction after it)
  bool reset_position_ids = false;    // positions restart at 0 after each eot
  bool reset_attention_mask = false;  // tokens after an eot do not attend to it or anything before it
};

// The three bool options (default false) a data plugin adds to its schema.
OptionSchema document_mask_options();
// From a [data] section; false for keys the plugin's schema lacks.
DocumentMasks document_masks(const Options& data);

// One sample: ids[T] (inputs), targets[T] (set to -1, ignored by the loss,
// where eod_mask_loss masks them), doc_start[T] (the first position of each
// token's document: 1 + the last k < t with ids[k] == eot, else 0; all 0
// without reset_attention_mask) and positions[T] (t - doc_start[t] with
// reset_position_ids, else t). Returns the targets that count (>= 0).
int64_t apply_document_masks(const DocumentMasks& masks, int32_t eot, const int32_t* ids, int32_t* targets,
                             int32_t* doc_start, int32_t* positions, int64_t t);

}  // namespace weft
