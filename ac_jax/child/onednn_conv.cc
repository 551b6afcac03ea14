// 2-D convolution (forward, input gradient, weight gradient) through oneDNN, as XLA FFI handlers.
//
// Why: XLA:CPU has no direct convolution for the vmapped-seed case (it runs a grouped
// convolution as a naive loop), and its im2col matmuls copy every activation k*k times. oneDNN's
// direct convolutions are what PyTorch uses on CPU. Built and loaded by ac_jax/child/onednn.py.
//
// Layouts (what XLA hands over, row-major): x [..., B, H, W, C], kernel [..., K, K, C, O],
// bias [..., O], y [..., B, OH, OW, O]. The leading dimensions (the vmapped seeds) must be equal
// on all operands; each leading index is one independent convolution, run one after another. The
// bias is added (and its gradient taken) inside the convolution, which saves XLA a pass over the
// output. Activations and weights are reordered to oneDNN's blocked layouts inside the call (its
// fast kernels need them). Plans (primitives, buffers) are cached per shape, a mutex each.

#include <cstdint>
#include <cstdlib>
#include <list>
#include <set>
#include <map>
#include <new>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

// Every primitive runs with a scratchpad of its own (scratchpad_mode::user). oneDNN's default
// "library" scratchpad lives in thread-local storage of the thread that created the primitive;
// XLA runs custom calls on whichever of its threads is free, and a primitive created on one
// thread and run on another wrote outside its scratchpad (intermittent segfaults in fuzzing).
#if DNNL_VERSION_MAJOR >= 3
#define AC_JAX_PD(kind, attr, ...) kind::primitive_desc(cpu_engine(), __VA_ARGS__, attr)
#define AC_JAX_PD_HINT(kind, attr, hint, ...) \
  kind::primitive_desc(cpu_engine(), __VA_ARGS__, hint, attr)
#else
#define AC_JAX_PD(kind, attr, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), attr, cpu_engine())
#define AC_JAX_PD_HINT(kind, attr, hint, ...) \
  kind::primitive_desc(kind::desc(__VA_ARGS__), attr, cpu_engine(), hint)
#endif

struct Shape {
  int64_t batch, height, width, channels, features, kernel, stride, padding;
  int64_t algorithm;  // 0: direct, 1: oneDNN's choice (Winograd F(4x4, 3x3) where it is faster)
  auto tie() const {
    return std::tie(batch, height, width, channels, features, kernel, stride, padding, algorithm);
  }
  bool operator<(const Shape& other) const { return tie() < other.tie(); }
  int64_t out_h() const { return (height + 2 * padding - kernel) / stride + 1; }
  int64_t out_w() const { return (width + 2 * padding - kernel) / stride + 1; }
  // Elements of one seed's x, kernel and y.
  int64_t x_size() const { return batch * height * width * channels; }
  int64_t w_size() const { return kernel * kernel * channels * features; }
  int64_t y_size() const { return batch * out_h() * out_w() * features; }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::primitive_attr own_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A primitive and its scratchpad.
struct Step {
  dnnl::primitive primitive;
  memory scratchpad;

  Step() = default;
  template <typename PrimitiveDesc>
  Step(const dnnl::primitive& p, const PrimitiveDesc& pd)
      : primitive(p), scratchpad(pd.scratchpad_desc(), cpu_engine()) {}
  void run(dnnl::stream& stream, std::unordered_map<int, memory> args) {
    args.insert({DNNL_ARG_SCRATCHPAD, scratchpad});
    primitive.execute(stream, args);
  }
};

// oneDNN's kernels may use aligned vector loads on the buffers they are handed directly; XLA's
// buffers (and their per-seed slices) are not always 64-byte aligned. Unaligned ones are copied.
constexpr uintptr_t kAlignment = 64;

// A tensor as XLA holds it (user layout) and the copy oneDNN works on: in the layout it wants
// (blocked, for its fast kernels) or, when that is XLA's layout, only if XLA's buffer is
// unaligned.
struct Operand {
  memory user, internal;
  bool reordered = false;
  bool direct = false;  // this call uses XLA's buffer itself
  Step to_internal, to_user;

  Operand() = default;
  // `shared`: a buffer of another operand in the same role (x, y or w) whose layout is `wanted`
  // too, to use instead of a new one; operands of one role are never used at the same time.
  Operand(const memory::desc& user_desc, const memory::desc& wanted, const Operand* shared) {
    user = memory(user_desc, cpu_engine(), DNNL_MEMORY_NONE);
    const bool reuse = shared != nullptr && shared->internal.get_desc() == wanted;
    internal = reuse ? shared->internal : memory(wanted, cpu_engine());
    reordered = wanted != user_desc;
    const auto attr = own_scratchpad();
    dnnl::reorder::primitive_desc in_pd(user, internal, attr), out_pd(internal, user, attr);
    to_internal = Step(dnnl::reorder(in_pd), in_pd);
    to_user = Step(dnnl::reorder(out_pd), out_pd);
  }
  void point_at(void* data) {
    user.set_data_handle(data);
    direct = !reordered && reinterpret_cast<uintptr_t>(data) % kAlignment == 0;
  }
  // The memory the primitive should read, holding `data`.
  memory& read(dnnl::stream& stream, void* data) {
    point_at(data);
    if (direct) return user;
    to_internal.run(stream, {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, internal}});
    return internal;
  }
  // The memory the primitive should write; `flush` then copies it to `data` where needed.
  memory& write(void* data) {
    point_at(data);
    return direct ? user : internal;
  }
  void flush(dnnl::stream& stream) {
    if (!direct) to_user.run(stream, {{DNNL_ARG_FROM, internal}, {DNNL_ARG_TO, user}});
  }
};

struct Plan {
  std::mutex mutex;
  dnnl::stream stream{cpu_engine()};
  Step forward, backward_data, backward_weights;
  Operand fwd_x, fwd_w, fwd_b, fwd_y;  // forward
  Operand bd_gy, bd_w, bd_gx;          // input gradient
  Operand bw_x, bw_gy, bw_gw, bw_gb;   // weight and bias gradients
  size_t bytes = 0;                    // oneDNN-side buffers and scratchpads

  void count_bytes() {
    std::set<void*> seen;
    auto add = [&](const memory& m) {
      if (seen.insert(m.get_data_handle()).second) bytes += m.get_desc().get_size();
    };
    for (Operand* op : {&fwd_x, &fwd_w, &fwd_b, &fwd_y, &bd_gy, &bd_w, &bd_gx, &bw_x, &bw_gy,
                        &bw_gw, &bw_gb})
      add(op->internal);
    for (Step* step : {&forward, &backward_data, &backward_weights}) add(step->scratchpad);
  }
};

std::unique_ptr<Plan> make_plan(const Shape& s) {
  using dt = memory::data_type;
  const memory::dims x_dims{s.batch, s.channels, s.height, s.width};
  const memory::dims w_dims{s.features, s.channels, s.kernel, s.kernel};
  const memory::dims y_dims{s.batch, s.features, s.out_h(), s.out_w()};
  const memory::dims strides{s.stride, s.stride}, pad{s.padding, s.padding};
  const memory::desc x_user(x_dims, dt::f32, tag::nhwc), y_user(y_dims, dt::f32, tag::nhwc);
  const memory::desc w_user(w_dims, dt::f32, tag::hwio);
  const memory::desc x_any(x_dims, dt::f32, tag::any), y_any(y_dims, dt::f32, tag::any);
  const memory::desc w_any(w_dims, dt::f32, tag::any);
  const memory::desc b_user({s.features}, dt::f32, tag::x);
  const auto algorithm = s.algorithm == 1 ? dnnl::algorithm::convolution_auto
                                           : dnnl::algorithm::convolution_direct;
  const auto attr = own_scratchpad();

  auto fwd_pd = AC_JAX_PD(dnnl::convolution_forward, attr, dnnl::prop_kind::forward_training,
                          algorithm, x_any, w_any, b_user, y_any, strides, pad, pad);
  auto bd_pd = AC_JAX_PD_HINT(dnnl::convolution_backward_data, attr, fwd_pd, algorithm, x_any,
                              w_any, y_any, strides, pad, pad);
  auto bw_pd = AC_JAX_PD_HINT(dnnl::convolution_backward_weights, attr, fwd_pd, algorithm, x_any,
                              w_any, b_user, y_any, strides, pad, pad);

  auto plan = std::make_unique<Plan>();
  plan->forward = Step(dnnl::convolution_forward(fwd_pd), fwd_pd);
  plan->backward_data = Step(dnnl::convolution_backward_data(bd_pd), bd_pd);
  plan->backward_weights = Step(dnnl::convolution_backward_weights(bw_pd), bw_pd);
  // Buffers are shared within a role: x (fwd_x, bd_gx, bw_x), y (fwd_y, bd_gy, bw_gy) and w
  // (fwd_w, bd_w, bw_gw). Each call uses one operand per role at a time, in order.
  Plan& p = *plan;
  p.fwd_x = Operand(x_user, fwd_pd.src_desc(), nullptr);
  p.fwd_w = Operand(w_user, fwd_pd.weights_desc(), nullptr);
  p.fwd_b = Operand(b_user, fwd_pd.bias_desc(), nullptr);
  p.fwd_y = Operand(y_user, fwd_pd.dst_desc(), nullptr);
  p.bd_gy = Operand(y_user, bd_pd.diff_dst_desc(), &p.fwd_y);
  p.bd_w = Operand(w_user, bd_pd.weights_desc(), &p.fwd_w);
  p.bd_gx = Operand(x_user, bd_pd.diff_src_desc(), &p.fwd_x);
  p.bw_x = Operand(x_user, bw_pd.src_desc(), &p.fwd_x);
  p.bw_gy = Operand(y_user, bw_pd.diff_dst_desc(), &p.bd_gy);
  p.bw_gw = Operand(w_user, bw_pd.diff_weights_desc(), &p.bd_w);
  p.bw_gb = Operand(b_user, bw_pd.diff_bias_desc(), nullptr);
  p.count_bytes();
  return plan;
}

// Plans are kept for reuse, least recently used first out once their buffers pass this budget
// (an archset run meets thousands of shapes; one plan of a wide layer holds hundreds of MB).
// Evicted plans still running elsewhere live on through their shared_ptr.
size_t cache_budget_bytes() {
  const char* mb = std::getenv("AC_JAX_ONEDNN_CACHE_MB");
  return (mb != nullptr ? std::strtoull(mb, nullptr, 10) : 2048) << 20;
}

std::shared_ptr<Plan> plan_for(const Shape& shape) {
  static std::mutex mutex;
  static std::list<Shape> recency;  // most recent first
  static std::map<Shape, std::pair<std::shared_ptr<Plan>, std::list<Shape>::iterator>> plans;
  static size_t bytes = 0;
  static const size_t budget = cache_budget_bytes();
  std::lock_guard<std::mutex> lock(mutex);
  if (auto found = plans.find(shape); found != plans.end()) {
    recency.splice(recency.begin(), recency, found->second.second);
    return found->second.first;
  }
  std::shared_ptr<Plan> plan = make_plan(shape);
  recency.push_front(shape);
  plans.emplace(shape, std::make_pair(plan, recency.begin()));
  bytes += plan->bytes;
  while (bytes > budget && plans.size() > 1) {
    auto oldest = plans.find(recency.back());
    bytes -= oldest->second.first->bytes;
    plans.erase(oldest);
    recency.pop_back();
  }
  return plan;
}

// Shape of one convolution and the number of leading (seed) indices, checked against all three
// operands: x [..., B, H, W, C], kernel [..., K, K, C, O], y [..., B, OH, OW, O].
ffi::Error read_shape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> b, ffi::Span<const int64_t> y, int64_t stride,
                      int64_t padding, int64_t algorithm, Shape* shape, int64_t* seeds) {
  if (x.size() < 4 || x.size() != w.size() || x.size() != y.size() || b.size() + 3 != x.size())
    return ffi::Error::InvalidArgument("onednn conv: operands need equal rank >= 4");
  const size_t lead = x.size() - 4;
  *seeds = 1;
  for (size_t i = 0; i < lead; ++i) {
    if (x[i] != w[i] || x[i] != y[i] || x[i] != b[i])
      return ffi::Error::InvalidArgument("onednn conv: leading (seed) dimensions differ");
    *seeds *= x[i];
  }
  *shape = Shape{x[lead], x[lead + 1], x[lead + 2], x[lead + 3], w[lead + 3], w[lead], stride,
                 padding, algorithm};
  if (algorithm != 0 && algorithm != 1)
    return ffi::Error::InvalidArgument("onednn conv: algorithm must be 0 (direct) or 1 (auto)");
  if (w[lead + 1] != shape->kernel || w[lead + 2] != shape->channels ||
      b[lead] != shape->features)
    return ffi::Error::InvalidArgument(
        "onednn conv: kernel must be [K, K, C_in, C_out] and bias [C_out]");
  if (stride < 1 || padding < 0 || shape->out_h() < 1 || shape->out_w() < 1 ||
      y[lead] != shape->batch || y[lead + 1] != shape->out_h() || y[lead + 2] != shape->out_w() ||
      y[lead + 3] != shape->features)
    return ffi::Error::InvalidArgument("onednn conv: output shape does not match the input");
  return ffi::Error::Success();
}

// oneDNN failures become XLA errors (Python exceptions), never crashes; running out of memory
// says so in the words the trainer classifies as "oom".
template <typename Body>
ffi::Error guarded(Body body) {
  const auto out_of_memory = [](const std::string& what) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "Out of memory in the oneDNN convolution: " + what);
  };
  try {
    body();
  } catch (const dnnl::error& e) {
    if (e.status == dnnl_out_of_memory) return out_of_memory(e.what());
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::bad_alloc& e) {
    return out_of_memory(e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// What both handlers do around their per-seed loop: check the shapes, take the shape's plan
// (locked for the call), run `body(plan, shape, seed)` for every seed, wait for the stream.
template <typename Body>
ffi::Error for_each_seed(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                         ffi::Span<const int64_t> b, ffi::Span<const int64_t> y, int64_t stride,
                         int64_t padding, int64_t algorithm, Body body) {
  Shape s;
  int64_t seeds;
  if (auto err = read_shape(x, w, b, y, stride, padding, algorithm, &s, &seeds); err.failure())
    return err;
  return guarded([&] {
    std::shared_ptr<Plan> held = plan_for(s);
    std::lock_guard<std::mutex> lock(held->mutex);
    for (int64_t i = 0; i < seeds; ++i) body(*held, s, i);
    held->stream.wait();
  });
}

using Buffer = ffi::Buffer<ffi::F32>;
using Result = ffi::ResultBuffer<ffi::F32>;

ffi::Error ForwardImpl(Buffer x, Buffer w, Buffer b, Result y, int64_t stride, int64_t padding,
                       int64_t algorithm) {
  return for_each_seed(
      x.dimensions(), w.dimensions(), b.dimensions(), y->dimensions(), stride, padding,
      algorithm, [&](Plan& plan, const Shape& s, int64_t i) {
        auto& src = plan.fwd_x.read(plan.stream, x.typed_data() + i * s.x_size());
        auto& wei = plan.fwd_w.read(plan.stream, w.typed_data() + i * s.w_size());
        auto& bias = plan.fwd_b.read(plan.stream, b.typed_data() + i * s.features);
        auto& dst = plan.fwd_y.write(y->typed_data() + i * s.y_size());
        plan.forward.run(plan.stream, {{DNNL_ARG_SRC, src},
                                       {DNNL_ARG_WEIGHTS, wei},
                                       {DNNL_ARG_BIAS, bias},
                                       {DNNL_ARG_DST, dst}});
        plan.fwd_y.flush(plan.stream);
      });
}

// All gradients in one call: they share the reordered output gradient, and one call keeps
// XLA from running two oneDNN thread teams side by side on the same cores.
ffi::Error BackwardImpl(Buffer x, Buffer w, Buffer grad_y, Result grad_x, Result grad_w,
                        Result grad_b, int64_t stride, int64_t padding, int64_t algorithm) {
  return for_each_seed(
      x.dimensions(), w.dimensions(), grad_b->dimensions(), grad_y.dimensions(), stride, padding,
      algorithm, [&](Plan& plan, const Shape& s, int64_t i) {
        float* gy_data = grad_y.typed_data() + i * s.y_size();
        auto& gy = plan.bd_gy.read(plan.stream, gy_data);
        auto& wei = plan.bd_w.read(plan.stream, w.typed_data() + i * s.w_size());
        auto& gx = plan.bd_gx.write(grad_x->typed_data() + i * s.x_size());
        plan.backward_data.run(plan.stream, {{DNNL_ARG_DIFF_DST, gy},
                                             {DNNL_ARG_WEIGHTS, wei},
                                             {DNNL_ARG_DIFF_SRC, gx}});
        plan.bd_gx.flush(plan.stream);

        auto& src = plan.bw_x.read(plan.stream, x.typed_data() + i * s.x_size());
        // Same layout for both gradients (the usual case): reuse the copy already made.
        const bool same_layout = plan.bw_gy.internal.get_desc() == plan.bd_gy.internal.get_desc();
        auto& gy_w = same_layout ? gy : plan.bw_gy.read(plan.stream, gy_data);
        auto& gw = plan.bw_gw.write(grad_w->typed_data() + i * s.w_size());
        auto& gb = plan.bw_gb.write(grad_b->typed_data() + i * s.features);
        plan.backward_weights.run(plan.stream, {{DNNL_ARG_SRC, src},
                                                {DNNL_ARG_DIFF_DST, gy_w},
                                                {DNNL_ARG_DIFF_WEIGHTS, gw},
                                                {DNNL_ARG_DIFF_BIAS, gb}});
        plan.bw_gw.flush(plan.stream);
        plan.bw_gb.flush(plan.stream);
      });
}

// Both handlers take (stride, padding, algorithm) after their buffers.
template <typename Binding>
auto with_conv_attrs(Binding&& binding) {  // Binding's methods are rvalue-only
  return std::move(binding)
      .template Attr<int64_t>("stride")
      .template Attr<int64_t>("padding")
      .template Attr<int64_t>("algorithm");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AcJaxConvForward, ForwardImpl,
                              with_conv_attrs(ffi::Ffi::Bind()
                                                  .Arg<Buffer>()    // x
                                                  .Arg<Buffer>()    // kernel
                                                  .Arg<Buffer>()    // bias
                                                  .Ret<Buffer>()));  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(AcJaxConvBackward, BackwardImpl,
                              with_conv_attrs(ffi::Ffi::Bind()
                                                  .Arg<Buffer>()    // x
                                                  .Arg<Buffer>()    // kernel
                                                  .Arg<Buffer>()    // grad y
                                                  .Ret<Buffer>()    // grad x
                                                  .Ret<Buffer>()    // grad kernel
                                                  .Ret<Buffer>()));  // grad bias
