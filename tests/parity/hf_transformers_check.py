"""weft's exported folders in Hugging Face transformers itself, for a machine
that has transformers (Meson suite 'parity', test 'hf-transformers').

    python3 hf_transformers_check.py PARITY_DUMP BUILD_ROOT SOURCE_DIR

For each variant of test_hf_interop.py (GPT-2 tied and untied/erf, Llama
with grouped-query attention, Qwen2 with q/k/v biases and a tied head), the
2-step checkpoint exported with `weft export --format hf` is loaded with
GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM.from_pretrained (the
class config.json names, float32, eager attention) and its logits on the
batch of step 1 are compared with weft's (model.init_from = the folder) at
rel 1e-4. Without transformers it prints one line and exits 77 (a skip).
"""

import os
import sys

try:
    import transformers
except Exception as e:  # noqa: BLE001
    print(f"SKIP: transformers is not installed ({type(e).__name__}: {e}); run this where it is")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from parity_report import report  # noqa: E402
from test_hf_interop import TOL_LOGITS, export_and_dump, for_each_variant, rel_err  # noqa: E402


def check_variant(label, recipe, overrides, dump_exe, build_root, weft, work):
    _, hf, cfg, _, ids, weft_logits = export_and_dump(label, recipe, overrides, dump_exe, build_root, weft, work)
    arch = cfg["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(hf, torch_dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(ids).logits
    err = rel_err(weft_logits, logits)
    report(err <= TOL_LOGITS, f"{label} {arch}.from_pretrained logits vs weft's", f"rel {err:.3e} (tol {TOL_LOGITS:.0e})")


if __name__ == "__main__":
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for_each_variant("hf_transformers_check.py", check_variant)
