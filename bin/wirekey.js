#!/usr/bin/env -S node --max-semi-space-size=32
// Entry point for `npx wirekey` and the systemd unit: the compiled CLI.
// Node's flags (the #! line, and the unit's): controller/cli/node-flags.ts.
import '../dist/controller/cli/main.js';
