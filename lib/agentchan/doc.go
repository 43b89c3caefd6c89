// Package agentchan is the host-only channel between the host and kestrel:
// the wire protocol both sides speak, the host's client (exec, copy in and
// out, workload logs) and the stream splicer the VM supervisor and volantd
// put between a client and the guest. docs/guest-access.md describes the
// protocol for people; this comment is its reference.
//
// It is imported by kestrel (the guest side, lib/kestrel/access), so it
// uses the standard library, hashicorp/yamux and lib/apierr only.
//
// # Transport
//
// The channel is a byte stream that only the host can reach, never the
// guest network: on QEMU a virtio-serial port named PortName (the guest's
// /dev/vportNpM whose sysfs name is PortName; the host side is a unix
// socket served by QEMU's chardev), on Cloud Hypervisor a vsock connection
// to VsockPort in the guest (the host side is CH's hybrid vsock unix
// socket: the host writes "CONNECT <port>\n" and reads "OK <n>\n" first,
// see DialVsock).
//
// # Handshake
//
// A byte stream to a virtio-serial port has no connection boundaries: bytes
// of an earlier session may still be in flight. So before anything else the
// host writes one line,
//
//	VOLANT-AGENT 1 <nonce>\n
//
// and the guest, skipping anything before such a line, answers
//
//	VOLANT-AGENT 1 <nonce> <Hello as JSON>\n
//
// The host skips anything before the answer carrying its nonce (on the same
// line too). From then on the stream carries one yamux session
// (github.com/hashicorp/yamux, see its spec.md) in which the host is the
// client. A session ends when the byte stream does; the guest then waits for
// the next handshake. It also ends when, where the next yamux frame should
// begin, the guest reads a byte other than yamux's version (0): the host
// started over (a guest restored from a snapshot holds the saved VM's
// session when the new host's handshake arrives), and that byte begins the
// next handshake, answered on the same stream (Accept, GuestSession).
//
// # Snapshots
//
// A VM paused while the host is sending it a frame would be saved with the
// frame half received, and a VM restored from it would read its new host's
// handshake as the rest of that frame. So a snapshot first asks the VM's
// supervisor to quiesce the channel (OpQuiesce, served by the supervisor
// itself): the host begins no frame, finishes the one under way, and
// writes a yamux ping; the guest's answer says it has read everything
// before it (Session.Quiesce). The host holds its frames until the
// snapshot ends. The other way, the old session of a restored guest may
// have been paused half-way through writing a frame: the guest's answer to
// the new handshake waits until that frame is whole, and the old session
// writes nothing after it (Restarted), so the host, which skips everything
// before the answer, never reads it as frames of the new session.
//
// # Streams
//
// The host opens a yamux stream per operation (the guest opens none). Every
// stream starts with one line of JSON from the host, a request whose "op"
// names the operation, and one line of JSON from the guest, the reply: a
// Reply whose "error" (an apierr.Error) ends the stream, or the operation's
// own answer. What follows depends on the op:
//
//	op       request         reply            then
//	exec     ExecRequest     ExecReply        control lines both ways (below)
//	attach   AttachRequest   Reply{OK}        raw bytes: stdin (fd 0) host→guest, stdout/stderr guest→host
//	read     ReadRequest     ReadReply        a tar stream guest→host, then one CopyResult line
//	write    WriteRequest    Reply{OK}        a tar stream host→guest (the host then closes its side), then one CopyResult line guest→host
//	logs     LogsRequest     Reply{OK}        LogRecord lines guest→host, each followed by its data, for as long as the stream is open
//	identity IdentityRequest IdentityReply    nothing (a restored guest takes a new identity; see OpIdentity)
//
// # Exec
//
// An exec is one control stream plus one attach stream per standard stream
// it uses: stdout always, stderr unless the exec has a TTY (then stdout
// carries the terminal's output), stdin when ExecRequest.Stdin is set. The
// host picks the exec's ID (random, 128 bits) and opens all of them at once,
// so a command costs one round trip; the guest starts the process when
// every stream it waits for is attached, and answers ExecReply{PID}. After
// that the host may send Control lines (resize a TTY, send a signal) and the
// guest sends one Control line with Exit when the process has ended and its
// stdout and stderr streams are closed. The host keeps the control stream
// open until then: closing it (or losing the session) means the client is
// gone, and the guest sends SIGHUP to the process's group and, after
// HangupGrace, SIGKILL, so nothing is left running.
//
// # Proxies
//
// A client never talks to the guest's byte stream directly: QEMU's chardev
// serves one client, so the VM's supervisor (`volant-launch run`) owns the
// channel and serves the same yamux stream layout to any number of clients
// on a unix socket in the run directory (launch.GuestSocketName). Each
// client stream is spliced to a new guest stream (Splice); the proxy reads
// the request line (to refuse ops it does not allow, or to answer with an
// error when the guest is not connected) and passes it on unchanged. volantd
// does the same for `POST /api/v1/vms/{name}/exec` after an HTTP upgrade
// (UpgradeProtocol).
package agentchan
