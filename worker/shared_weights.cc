// A TorchScript module's weights as the copy its GPU's workers share (worker/shared_weights.h).
#include "worker/shared_weights.h"

#include <torch/cuda.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "shm/gpu_memory.h"

namespace shoal {

namespace {

constexpr uint64_t kAlign = 512;  // what torch's own CUDA allocator gives each storage
constexpr int kMaxDepth = 64;

// The tensors `v` holds, in the order of its slots, depth-first.
void Collect(const c10::IValue& v, std::vector<at::Tensor>* out, int depth) {
  if (depth > kMaxDepth) return;
  if (v.isTensor()) {
    out->push_back(v.toTensor());
  } else if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorVector()) out->push_back(t);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) Collect(e, out, depth + 1);
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) Collect(e, out, depth + 1);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) Collect(kv.value(), out, depth + 1);
  } else if (v.isObject()) {
    auto obj = v.toObject();
    for (size_t i = 0; i < obj->slots().size(); ++i) Collect(obj->getSlot(i), out, depth + 1);
  }
}

// Tensor constants of every function of the module's code, moved to `device`.
void MoveConstants(torch::jit::Module* module, const c10::Device& device) {
  for (torch::jit::Function* f : module->_ivalue()->compilation_unit()->get_functions()) {
    if (!f->isGraphFunction()) continue;
    std::vector<torch::jit::Block*> blocks = {torch::jit::toGraphFunction(*f).graph()->block()};
    while (!blocks.empty()) {
      torch::jit::Block* b = blocks.back();
      blocks.pop_back();
      for (torch::jit::Node* n : b->nodes()) {
        for (torch::jit::Block* sub : n->blocks()) blocks.push_back(sub);
        if (n->kind() == c10::prim::Constant && n->hasAttribute(c10::attr::value) &&
            n->kindOf(c10::attr::value) == torch::jit::AttributeKind::t) {
          n->t_(c10::attr::value, n->t(c10::attr::value).to(device));
        }
      }
    }
  }
}

void ReleaseMapping(void* ctx) { delete static_cast<std::shared_ptr<GpuMemory>*>(ctx); }

// Maps the copy behind `fd` (taken) read-only, or writable where the driver cannot.
Result<std::unique_ptr<GpuMemory>> MapCopy(int fd, uint64_t size, bool* read_only) {
  int keep = dup(fd);
  auto m = GpuMemory::Import(fd, size, 0, /*read_only=*/true);
  *read_only = m.ok();
  if (m.ok() || keep < 0) {
    if (keep >= 0) close(keep);
    return m;
  }
  return GpuMemory::Import(keep, size, 0, /*read_only=*/false);
}

}  // namespace

Result<std::unique_ptr<SharedModuleWeights>> SharedModuleWeights::Share(torch::jit::Module* module, bool upload,
                                                                        int fd, uint64_t size) {
  std::vector<at::Tensor> tensors;
  Collect(module->_ivalue(), &tensors, 0);
  // Each storage once, in the order met: its offset in the copy.
  std::map<const c10::StorageImpl*, uint64_t> where;
  std::vector<std::pair<c10::Storage, uint64_t>> storages;
  uint64_t total = 0;
  for (const auto& t : tensors) {
    if (!t.defined() || !t.has_storage() || t.storage().nbytes() == 0) continue;
    const c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
    if (where.count(s) != 0) continue;
    where[s] = total;
    storages.emplace_back(t.storage(), total);
    total += (t.storage().nbytes() + kAlign - 1) / kAlign * kAlign;
  }
  const c10::Device device(c10::kCUDA, 0);  // a worker sees its GPU alone
  if (storages.empty()) {
    if (!upload && fd >= 0) close(fd);
    MoveConstants(module, device);
    return std::unique_ptr<SharedModuleWeights>();
  }
  bool read_only = false;
  int export_fd = -1;
  std::unique_ptr<GpuMemory> mapped;
  if (upload) {
    auto made = GpuMemory::Create(0, total);
    if (!made.ok()) return made.status();
    const auto bytes = at::TensorOptions().dtype(at::kByte);
    for (const auto& [s, offset] : storages) {
      auto n = static_cast<int64_t>(s.nbytes());
      at::Tensor src = at::from_blob(const_cast<void*>(static_cast<const void*>(s.data())), {n}, bytes);
      at::from_blob(reinterpret_cast<void*>((*made)->address() + offset), {n}, bytes.device(device)).copy_(src);
    }
    torch::cuda::synchronize();
    export_fd = dup((*made)->fd());
    auto m = MapCopy(dup((*made)->fd()), (*made)->size(), &read_only);
    if (!m.ok()) {
      close(export_fd);
      return m.status();
    }
    mapped = std::move(*m);
  } else {
    if (size < total) {
      close(fd);
      return Status::Internal("the shared GPU weights hold " + std::to_string(size) + " bytes; the module's tensors need " +
                              std::to_string(total));
    }
    auto m = MapCopy(fd, size, &read_only);
    if (!m.ok()) return m.status();
    mapped = std::move(*m);
  }
  std::shared_ptr<GpuMemory> memory = std::move(mapped);
  // Every tensor over the copy; tensors that shared a storage share it there too.
  std::map<const c10::StorageImpl*, c10::Storage> on_gpu;
  for (const auto& [s, offset] : storages) {
    auto n = s.nbytes();
    c10::DataPtr ptr(reinterpret_cast<void*>(memory->address() + offset), new std::shared_ptr<GpuMemory>(memory),
                     &ReleaseMapping, device);
    on_gpu.emplace(s.unsafeGetStorageImpl(),
                   c10::Storage(c10::Storage::use_byte_size_t(), static_cast<int64_t>(n), std::move(ptr), nullptr, false));
  }
  torch::NoGradGuard no_grad;
  for (auto& t : tensors) {
    if (!t.defined() || !t.has_storage() || t.is_cuda()) continue;  // is_cuda: met before (one impl, two slots)
    auto it = on_gpu.find(t.storage().unsafeGetStorageImpl());
    if (it == on_gpu.end()) {
      t.set_data(t.to(device));  // empty: nothing to share
      continue;
    }
    at::Tensor g = at::empty({0}, t.options().device(device));
    g.set_(it->second, t.storage_offset(), t.sizes(), t.strides());
    t.set_data(g);
  }
  MoveConstants(module, device);
  uint64_t copy_size = memory->size();
  return std::unique_ptr<SharedModuleWeights>(new SharedModuleWeights(export_fd, copy_size, read_only));
}

SharedModuleWeights::~SharedModuleWeights() {
  if (export_fd_ >= 0) close(export_fd_);
}

}  // namespace shoal
