package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestCompletionInInteractiveShells types into real bash and zsh sessions
// (in tmux) with the generated script loaded and presses Tab, as a person
// does: an ambiguous word lists the candidates (zsh with descriptions), an
// unambiguous one is completed on the command line.
func TestCompletionInInteractiveShells(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			for _, p := range []string{"tmux", shell} {
				if _, err := exec.LookPath(p); err != nil {
					netnstest.SkipOrFail(t, "needs %s (scripts/install-deps.sh installs it)", p)
				}
			}
			bin := volarBinary(t)
			dir := t.TempDir()
			rc := filepath.Join(dir, "rc")
			prompt := shell + "$ "
			var command string
			switch shell {
			case "bash":
				os.WriteFile(rc, []byte(fmt.Sprintf("PS1=%q\nsource <(volar completion bash)\n", prompt)), 0o644)
				command = "bash --noprofile --rcfile " + rc + " -i"
			case "zsh":
				os.WriteFile(filepath.Join(dir, ".zshrc"), []byte(fmt.Sprintf(
					"autoload -U compinit && compinit -u -d %s/.zcompdump\nsource <(volar completion zsh)\nPS1=%q\n", dir, prompt)), 0o644)
				command = "zsh -i"
			}
			tm := newTmux(t, dir, command, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "ZDOTDIR="+dir, "HOME="+dir,
				"VOLANT_HOST=/nonexistent/volantd.sock", "TERM=xterm")
			tm.waitScreen("the prompt", func(s string) bool { return strings.Contains(s, strings.TrimSpace(prompt)) })

			tm.literal("volar vms st")
			tm.keys("Tab")
			if shell == "bash" {
				tm.keys("Tab") // bash lists candidates on the second Tab
			}
			s := tm.waitScreen("the candidates", func(s string) bool {
				return strings.Contains(s, "start") && strings.Contains(s, "stop")
			})
			if shell == "zsh" && !strings.Contains(s, "Start a stopped, crashed or failed VM") {
				t.Errorf("zsh lists no descriptions:\n%s", s)
			}
			tm.keys("C-u")
			tm.literal("volar deployments sc")
			tm.keys("Tab")
			tm.waitScreen("the completed word", func(s string) bool {
				// (capture-pane drops the space completion adds)
				return strings.Contains(s, prompt+"volar deployments scale")
			})
			tm.keys("C-u")
			tm.literal("volar vms create web1 --plu")
			tm.keys("Tab")
			tm.waitScreen("the completed flag", func(s string) bool {
				return strings.Contains(s, prompt+"volar vms create web1 --plugin")
			})
		})
	}
}
