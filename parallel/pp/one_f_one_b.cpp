#include "one_f_one_b.hpp"

namespace weft {

double OneFOneB::run(ScheduleStep& step) {
  Backend& backend = *step.backend;
  std::vector<Module*> layers = step.model->layers();
  double loss_sum = 0;
  for (int mb = 0; mb < step.microbatches; ++mb) {
    Context ctx(backend, mb);
    Tensor ids;
    step.load(mb, ids, ctx.targets);
    ctx.dloss_scale = step.dloss_scale;
    ctx.last_microbatch = mb == step.microbatches - 1;
    ctx.on_grad_ready = step.on_grad_ready;
    Tensor x = ids;
    for (Module* layer : layers) x = layer->forward(ctx, x);
    loss_sum += backend.sum(x.data<float>(), x.numel());  // per-token losses [B,T]
    Tensor dy;
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) dy = (*it)->backward(ctx, dy);
  }
  return loss_sum;
}

}  // namespace weft
