#!/usr/bin/env node
// Entry point for `npx wirekey` and the systemd unit: the compiled CLI.
import '../dist/controller/cli/main.js';
