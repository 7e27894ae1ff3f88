// SPDX-License-Identifier: Apache-2.0
// Feature probes: what this kernel's BPF can do, asked of the kernel
// itself (libbpf's probes, and a trivial program load where libbpf has none).
#pragma once

#include <napi.h>

namespace wirekey {

void InitProbes(Napi::Env env, Napi::Object exports);

}  // namespace wirekey
