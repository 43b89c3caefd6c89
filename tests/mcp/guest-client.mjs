// Drives volantd's exec_vm and vm_logs MCP tools with the official
// TypeScript SDK against a VM whose agent channel is live. cmd/volantd's
// TestGuestAccessThroughVolantd runs it against a daemon whose VM runs on
// the fake Cloud Hypervisor (its guest agent runs commands on the host);
// TestVMGuestAccess against a real guest under QEMU (kestrel as PID 1,
// busybox for the commands).
//
// Environment: MCP_URL, MCP_TOKEN (streamable HTTP), MCP_VM (the VM);
// MCP_LOG_STDOUT and MCP_LOG_STDERR, a line the workload wrote to each
// stream (and only there); MCP_LOG_CONSOLE, text on the serial console;
// MCP_TIMEOUT_MS, the timeout given to a command that outlives it (long
// enough for its first output to come back from the guest).
// Prints one JSON summary line on stdout; exits 1 on the first failed check.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const env = process.env;
const vm = env.MCP_VM;
const stdoutLine = env.MCP_LOG_STDOUT || "fake guest workload: stdout";
const stderrLine = env.MCP_LOG_STDERR || "fake guest workload: stderr";
const consoleText = env.MCP_LOG_CONSOLE || "fake cloud-hypervisor guest: booted";
const timeoutMS = Number(env.MCP_TIMEOUT_MS || 500);
const steps = [];

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}` + (detail === undefined ? "" : `: ${JSON.stringify(detail)}`));
    process.exit(1);
  }
  steps.push(what);
}

function structured(res) {
  if (res.structuredContent) return res.structuredContent;
  return JSON.parse(res.content[0].text);
}

const client = new Client({ name: "volant-mcp-guest-test", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(env.MCP_URL), {
  requestInit: { headers: { Authorization: `Bearer ${env.MCP_TOKEN}` } },
}));

const { tools } = await client.listTools();
const exec = tools.find((t) => t.name === "exec_vm");
check(exec && (exec.inputSchema.required || []).includes("command"), "tools/list has exec_vm, which requires a command", exec);
check(tools.some((t) => t.name === "vm_logs"), "tools/list has vm_logs");

let res = await client.callTool({ name: "exec_vm", arguments: { name: vm, command: ["sh", "-c", "echo out; echo err >&2; exit 3"] } });
let r = structured(res);
check(!res.isError && r.exit_code === 3 && r.stdout === "out\n" && r.stderr === "err\n", "exec_vm returns exit code, stdout and stderr", res);

res = await client.callTool({ name: "exec_vm", arguments: { name: vm, command: ["cat"], stdin: "given on stdin\n" } });
r = structured(res);
check(!res.isError && r.exit_code === 0 && r.stdout === "given on stdin\n", "exec_vm passes stdin", res);

res = await client.callTool({ name: "exec_vm", arguments: { name: vm, command: ["sh", "-c", "yes | head -c 100000"], max_output: 1000 } });
r = structured(res);
check(!res.isError && r.stdout.length === 1000 && r.stdout_truncated === 99000, "exec_vm caps the output and counts the rest", { len: r.stdout.length, truncated: r.stdout_truncated });

res = await client.callTool({ name: "exec_vm", arguments: { name: vm, command: ["no-such-command-anywhere"] } });
check(res.isError === true && /NOT_FOUND/.test(res.content[0].text), "exec_vm of a missing command is a NOT_FOUND tool error", res);

res = await client.callTool({ name: "exec_vm", arguments: { name: vm, command: ["sh", "-c", "echo started; sleep 30"], timeout_ms: timeoutMS } });
check(res.isError === true && /TIMEOUT/.test(res.content[0].text) && /started/.test(res.content[0].text), "exec_vm past its timeout is a TIMEOUT tool error with the output so far", res);

res = await client.callTool({ name: "vm_logs", arguments: { name: vm } });
check(!res.isError && res.content[0].text.includes(stdoutLine) && res.content[0].text.includes(stderrLine),
  "vm_logs returns the workload's output", res);
res = await client.callTool({ name: "vm_logs", arguments: { name: vm, stream: "stderr" } });
check(!res.isError && res.content[0].text.includes(stderrLine) && !res.content[0].text.includes(stdoutLine), "vm_logs reads one stream", res);
res = await client.callTool({ name: "vm_logs", arguments: { name: vm, stream: "console" } });
check(!res.isError && res.content[0].text.includes(consoleText), "vm_logs stream console reads the serial console", res);

await client.close();
console.log(JSON.stringify({ ok: true, checks: steps.length }));
