// SPDX-License-Identifier: Apache-2.0
// Errors thrown to JavaScript carry errno, the message libbpf printed while
// the failing call ran, and the verifier log when a program was refused.
#pragma once

#include <napi.h>
#include <string>

namespace wirekey {

// Installs the libbpf print callback that records messages per call.
void InstallLibbpfLog();

// Starts a fresh capture; call before each libbpf operation.
void ResetLibbpfLog();

// Builds an Error for a failed libbpf/syscall operation. `err` is a
// negative or positive errno value.
Napi::Error MakeError(Napi::Env env, const std::string& what, int err);

}  // namespace wirekey
