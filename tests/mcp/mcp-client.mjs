// Drives volantd's MCP server with the official TypeScript SDK, as an MCP
// host would: initialize, tools/list, tools/call. cmd/volantd's TestMCP*
// runs it against a daemon with one installed plugin ("web") and one
// deployment ("svc"), over streamable HTTP and over stdio (volantd mcp).
//
// Environment:
//   MCP_TRANSPORT   http | stdio
//   MCP_URL         http: the /mcp endpoint
//   MCP_TOKEN       http: the bearer token
//   MCP_COMMAND     stdio: the server command, JSON array (["volantd","mcp",...])
//   MCP_VM          the VM name to create and delete
//
// Prints one JSON summary line on stdout; exits 1 on the first failed check.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const env = process.env;
const vm = env.MCP_VM || "mcp1";
const steps = [];

function check(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL: ${what}` + (detail === undefined ? "" : `: ${JSON.stringify(detail)}`));
    process.exit(1);
  }
  steps.push(what);
}

function transport() {
  if (env.MCP_TRANSPORT === "stdio") {
    const [command, ...args] = JSON.parse(env.MCP_COMMAND);
    return new StdioClientTransport({ command, args, stderr: "inherit" });
  }
  return new StreamableHTTPClientTransport(new URL(env.MCP_URL), {
    requestInit: { headers: { Authorization: `Bearer ${env.MCP_TOKEN}` } },
  });
}

// structured returns a tool result's JSON: structuredContent, or the JSON
// text the server also sends for clients without structured output.
function structured(res) {
  if (res.structuredContent) return res.structuredContent;
  return JSON.parse(res.content[0].text);
}

const client = new Client({ name: "volant-mcp-test", version: "1.0.0" });
await client.connect(transport());
check(client.getServerVersion()?.name === "volantd", "initialize: server is volantd", client.getServerVersion());

const { tools } = await client.listTools();
const names = tools.map((t) => t.name).sort();
for (const want of ["create_vm", "delete_vm", "list_plugins", "list_vms", "pause_vm", "resume_vm", "scale_deployment", "stop_vm", "vm_logs"]) {
  check(names.includes(want), `tools/list has ${want}`, names);
}
const create = tools.find((t) => t.name === "create_vm");
check(create.inputSchema?.type === "object" && create.inputSchema.properties?.plugin, "create_vm has an input schema", create.inputSchema);
check((create.inputSchema.required || []).includes("name"), "create_vm requires name", create.inputSchema);

let res = await client.callTool({ name: "list_plugins", arguments: {} });
check(!res.isError && structured(res).plugins.some((p) => p.name === "web"), "list_plugins lists web", res);

check([].concat(create.inputSchema.properties?.ports?.type).includes("array"), "create_vm takes ports", create.inputSchema);
res = await client.callTool({ name: "create_vm", arguments: { name: vm + "-bad", plugin: "web", ports: ["80:99999"] } });
check(res.isError && res.content[0].text.startsWith("INVALID_INPUT"), "create_vm refuses a bad port mapping", res);
res = await client.callTool({ name: "create_vm", arguments: { name: vm, plugin: "web", memory_mb: 192, ports: ["18080:80", "127.0.0.1:15353:53/udp"] } });
const created = structured(res);
check(!res.isError && created.name === vm && created.ip && created.resources.memory_mb === 192, "create_vm creates a VM with an address", res);
const ports = (created.ports || []).map((p) => `${p.host_ip || ""}:${p.host_port}:${p.guest_port}/${p.protocol || "tcp"}`).sort();
check(JSON.stringify(ports) === JSON.stringify(["127.0.0.1:15353:53/udp", ":18080:80/tcp"]), "create_vm publishes its ports", created.ports);

res = await client.callTool({ name: "list_vms", arguments: { plugin: "web" } });
check(!res.isError && structured(res).vms.some((v) => v.name === vm && v.ip === created.ip && (v.ports || []).length === 2), "list_vms shows it with its ports", res);

res = await client.callTool({ name: "vm_logs", arguments: { name: vm, tail: 5 } });
check(!res.isError && res.content[0].type === "text", "vm_logs reads the console log", res);

res = await client.callTool({ name: "pause_vm", arguments: { name: vm } });
check(!res.isError && structured(res).state === "paused", "pause_vm pauses it", res);
res = await client.callTool({ name: "resume_vm", arguments: { name: vm } });
check(!res.isError && ["starting", "running"].includes(structured(res).state), "resume_vm resumes it", res);
res = await client.callTool({ name: "resume_vm", arguments: { name: "nope" } });
check(res.isError && res.content[0].text.startsWith("NOT_FOUND"), "resume_vm of no VM is NOT_FOUND", res);

res = await client.callTool({ name: "stop_vm", arguments: { name: vm } });
check(!res.isError && structured(res).state === "stopped", "stop_vm stops it", res);

res = await client.callTool({ name: "scale_deployment", arguments: { name: "svc", replicas: 2 } });
check(!res.isError && structured(res).replicas === 2, "scale_deployment sets replicas", res);

// A rolling update to web@2 (the fakes never turn healthy, so it stays
// under way), its status, and undo turning it around.
for (const want of ["rollout_status", "undo_rollout", "update_deployment"]) {
  check(names.includes(want), `tools/list has ${want}`, names);
}
res = await client.callTool({ name: "update_deployment", arguments: { name: "svc", plugin: "web@2" } });
check(!res.isError && structured(res).plugin_version === "2" && structured(res).rollout?.state === "progressing", "update_deployment starts an update to web@2", res);
res = await client.callTool({ name: "rollout_status", arguments: { name: "svc" } });
check(!res.isError && structured(res).to === "web@2" && structured(res).from === "web@1", "rollout_status shows it", res);
res = await client.callTool({ name: "undo_rollout", arguments: { name: "svc" } });
check(!res.isError && structured(res).state === "rolling_back" && structured(res).reason === "undone", "undo_rollout rolls it back", res);

res = await client.callTool({ name: "delete_vm", arguments: { name: vm } });
check(!res.isError && structured(res).state === "deleted", "delete_vm deletes it", res);

// Volumes: made, mounted by a VM, kept from deletion while it is attached.
for (const want of ["create_volume", "delete_volume", "get_volume", "list_volumes", "resize_volume"]) {
  check(names.includes(want), `tools/list has ${want}`, names);
}
res = await client.callTool({ name: "create_volume", arguments: { name: "mcpvol", size: "16MiB" } });
check(!res.isError && structured(res).state === "ready" && structured(res).size_bytes === 16 << 20, "create_volume makes a volume", res);
res = await client.callTool({ name: "create_vm", arguments: { name: vm + "v", plugin: "web", volumes: [{ volume: "mcpvol", path: "/data" }] } });
check(!res.isError && structured(res).volumes?.[0]?.path === "/data", "create_vm mounts a volume", res);
res = await client.callTool({ name: "get_volume", arguments: { name: "mcpvol" } });
check(!res.isError && structured(res).attachments.some((a) => a.vm === vm + "v" && a.holding), "get_volume shows the VM holding it", res);
res = await client.callTool({ name: "delete_volume", arguments: { name: "mcpvol" } });
check(res.isError === true && /VOLUME_IN_USE/.test(res.content[0].text), "delete_volume of an attached volume is a VOLUME_IN_USE tool error", res);
res = await client.callTool({ name: "delete_vm", arguments: { name: vm + "v" } });
check(!res.isError, "delete_vm of the volume's VM", res);
res = await client.callTool({ name: "resize_volume", arguments: { name: "mcpvol", size: "32MiB" } });
check(!res.isError && structured(res).size === "32MiB", "resize_volume grows it", res);
res = await client.callTool({ name: "delete_volume", arguments: { name: "mcpvol" } });
check(!res.isError && structured(res).state === "deleted", "delete_volume deletes it once unused", res);
res = await client.callTool({ name: "list_volumes", arguments: {} });
check(!res.isError && structured(res).volumes.length === 0, "list_volumes is empty again", res);

// Snapshots: a running VM saved, a VM started from it, the source rolled
// back, the snapshot kept from deletion while in use.
for (const want of ["snapshot_vm", "create_vm_from_snapshot", "restore_vm", "list_snapshots", "delete_snapshot"]) {
  check(names.includes(want), `tools/list has ${want}`, names);
}
res = await client.callTool({ name: "create_vm", arguments: { name: vm + "s", plugin: "web" } });
check(!res.isError, "create_vm for a snapshot", res);
res = await client.callTool({ name: "snapshot_vm", arguments: { vm: vm + "s", name: "mcpsnap" } });
check(!res.isError && structured(res).name === "mcpsnap" && structured(res).vm === vm + "s" && structured(res).plugin === "web", "snapshot_vm saves it", res);
res = await client.callTool({ name: "create_vm_from_snapshot", arguments: { name: vm + "c", snapshot: "mcpsnap" } });
check(!res.isError && structured(res).plugin === "web" && structured(res).ip, "create_vm_from_snapshot starts a VM from it", res);
res = await client.callTool({ name: "list_snapshots", arguments: {} });
check(!res.isError && structured(res).snapshots.some((s) => s.name === "mcpsnap" && s.used_by.includes("vm/" + vm + "c")), "list_snapshots shows who uses it", res);
res = await client.callTool({ name: "restore_vm", arguments: { vm: vm + "s", snapshot: "mcpsnap" } });
check(!res.isError && structured(res).name === vm + "s", "restore_vm rolls the source back", res);
res = await client.callTool({ name: "delete_snapshot", arguments: { name: "mcpsnap" } });
check(res.isError === true && /CONFLICT/.test(res.content[0].text), "delete_snapshot of a snapshot in use is a CONFLICT tool error", res);
for (const v of [vm + "s", vm + "c"]) {
  res = await client.callTool({ name: "delete_vm", arguments: { name: v } });
  check(!res.isError, `delete_vm ${v}`, res);
}
res = await client.callTool({ name: "delete_snapshot", arguments: { name: "mcpsnap" } });
check(!res.isError && structured(res).name === "mcpsnap", "delete_snapshot deletes it once unused", res);

// Errors are tool errors carrying the API's code, not protocol failures.
res = await client.callTool({ name: "delete_vm", arguments: { name: vm } });
check(res.isError === true && /NOT_FOUND/.test(res.content[0].text), "delete_vm of a deleted VM is a NOT_FOUND tool error", res);
res = await client.callTool({ name: "create_vm", arguments: { name: "Bad Name", plugin: "web" } });
check(res.isError === true && /INVALID_INPUT/.test(res.content[0].text), "create_vm with a bad name is an INVALID_INPUT tool error", res);
res = await client.callTool({ name: "create_vm", arguments: { plugin: "web" } });
check(res.isError === true, "create_vm without a name is refused", res);

await client.close();
console.log(JSON.stringify({ ok: true, transport: env.MCP_TRANSPORT || "http", checks: steps.length }));
