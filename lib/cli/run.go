package cli

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/jessevdk/go-flags"

	"github.com/volantvm/volant/lib/apierr"
)

// Command is one verb of a command: a struct whose fields go-flags fills
// from the command line (`long:"vm"`, positional-args), with Execute doing
// the work. Commands that need the command's global flags implement
// CommandWith instead.
type Command interface {
	Execute(ctx context.Context, env *Env) error
}

// CommandWith is a Command that also reads the global flags: the struct G
// given to Run.
type CommandWith[G any] interface {
	Execute(ctx context.Context, env *Env, global *G) error
}

// Run parses env.Args into opts and executes the verb they name. opts is a
// struct whose fields tagged `command:"verb"` are the verbs (a verb with
// subverbs, like `volant-net tap`, holds further command fields); its other
// fields are global flags, which commands implementing CommandWith[G] are
// given. name is the command's name, as in usage texts ("volant-ipam").
//
// Before anything executes, Run refuses (USAGE) what the command line
// cannot mean: a missing verb, a positional argument no verb declares, and
// a flag that takes one value given twice (see Parse). --help prints usage
// on stdout and returns an error Exit maps to status 0.
func Run[G any](ctx context.Context, env *Env, name string, opts *G) error {
	verb, rest, err := Parse(env, name, opts)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return apierr.New(apierr.Usage, "%s: unexpected argument %q", strings.TrimSpace(name+" "+verb), rest[0]).
			With("hint", "run "+strings.TrimSpace(name+" "+verb)+" --help")
	}
	data := CommandFor(opts, verb)
	e := *env
	e.Name, e.Verb = name, verb
	switch c := data.(type) {
	case CommandWith[G]:
		return c.Execute(ctx, &e, opts)
	case Command:
		return c.Execute(ctx, &e)
	}
	// A verb without Execute is a bug of the command, not of its user.
	return fmt.Errorf("%s: verb %q has no Execute method", name, verb)
}

// DefaultVerb returns env with verb put before its arguments when they
// name no verb (there are none, or the first is a flag), for a command
// whose main verb may be left out: `volantd --socket S` is `volantd serve
// --socket S`. env itself is not changed.
func DefaultVerb(env *Env, verb string) *Env {
	if len(env.Args) > 0 && !strings.HasPrefix(env.Args[0], "-") {
		return env
	}
	e := *env
	e.Args = append([]string{verb}, env.Args...)
	return &e
}

// CommandFor returns a pointer to the struct of the verb at path ("tap
// add", as Parse returns it) in opts, found the way go-flags finds
// commands: fields tagged `command:"name"`, in opts or in struct fields
// (groups) inside it; nil when there is none. Run uses it; so may a
// command that parses with a go-flags parser of its own (volar).
func CommandFor(opts any, path string) any {
	v := reflect.ValueOf(opts)
	for _, name := range strings.Fields(path) {
		f, ok := commandField(reflect.Indirect(v), name)
		if !ok {
			return nil
		}
		v = f
	}
	if v.Kind() != reflect.Pointer {
		v = v.Addr()
	}
	return v.Interface()
}

func commandField(v reflect.Value, name string) (reflect.Value, bool) {
	if v.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		fv := v.Field(i)
		if f.Tag.Get("command") == name {
			return fv, true
		}
		if f.Tag.Get("command") == "" && f.Tag.Get("positional-args") == "" {
			if found, ok := commandField(reflect.Indirect(fv), name); ok {
				return found, true
			}
		}
	}
	return reflect.Value{}, false
}

// Parse parses env.Args with go-flags into opts, whose subcommands are
// fields tagged `command:"name"`. It returns the active command path (for
// example "tap add"; "" when opts has no subcommands) and the positional
// arguments left over. --help prints usage on stdout; the caller returns the
// error, which Exit maps to status 0. Parse errors are USAGE errors, and so
// is a flag that takes one value given more than once (see CheckRepeated).
func Parse(env *Env, name string, opts any) (string, []string, error) {
	p := flags.NewParser(opts, flags.HelpFlag|flags.PassDoubleDash)
	p.Name = name
	rest, err := p.ParseArgs(env.Args)
	if err != nil {
		var fe *flags.Error
		if errors.As(err, &fe) && fe.Type == flags.ErrHelp {
			fmt.Fprintln(env.Stdout, fe.Message)
			return "", nil, errHelp
		}
		return "", nil, apierr.Wrap(apierr.Usage, err, name).With("hint", "run "+name+" --help")
	}
	var path []string
	for c := p.Active; c != nil; c = c.Active {
		path = append(path, c.Name)
	}
	if err := CheckRepeated(p, env.Args); err != nil {
		return "", nil, err
	}
	return strings.Join(path, " "), rest, nil
}

// CheckRepeated returns a USAGE error when args, which p has parsed, give
// a flag that holds one value more than once: `--vm a1 --vm a2` would
// otherwise silently mean a2. Flags that collect values (slices, maps) may
// repeat, and so may switches (a bool given twice means the same).
func CheckRepeated(p *flags.Parser, args []string) error {
	seen := map[*flags.Option]string{}
	chain := []*flags.Command{p.Command} // the root, then each verb named so far
	note := func(o *flags.Option, spelled string) error {
		if o == nil || repeatable(o) {
			return nil
		}
		if first, ok := seen[o]; ok {
			cmd := p.Name
			for _, c := range chain[1:] {
				cmd += " " + c.Name
			}
			return apierr.New(apierr.Usage, "%s: %s given twice (%s, then %s); give it once", cmd, optionName(o), first, spelled).
				With("flag", optionName(o)).With("hint", "run "+cmd+" --help")
		}
		seen[o] = spelled
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return nil
		case strings.HasPrefix(a, "--"):
			long, _, hasValue := strings.Cut(a[2:], "=")
			o := findOption(chain, func(o *flags.Option) bool { return o.LongNameWithNamespace() == long })
			if o == nil {
				continue
			}
			spelled := a
			if !hasValue && takesArgument(o) && !o.OptionalArgument && i+1 < len(args) {
				i++
				spelled = a + " " + args[i]
			}
			if err := note(o, spelled); err != nil {
				return err
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j, r := range a[1:] {
				o := findOption(chain, func(o *flags.Option) bool { return o.ShortName == r })
				if o == nil {
					break
				}
				spelled := "-" + string(r)
				if takesArgument(o) {
					if attached := a[1+j+len(string(r)):]; attached != "" {
						spelled += attached
					} else if !o.OptionalArgument && i+1 < len(args) {
						i++
						spelled += " " + args[i]
					}
					if err := note(o, spelled); err != nil {
						return err
					}
					break // the rest of the word is the value
				}
				if err := note(o, spelled); err != nil {
					return err
				}
			}
		default:
			if sub := findCommand(chain[len(chain)-1], a); sub != nil {
				chain = append(chain, sub)
			}
		}
	}
	return nil
}

// findOption looks an option up in the innermost command of chain and
// then in those above it, as go-flags does: a verb accepts its parents'
// flags too.
func findOption(chain []*flags.Command, match func(*flags.Option) bool) *flags.Option {
	for i := len(chain) - 1; i >= 0; i-- {
		if o := findInGroup(chain[i].Group, match); o != nil {
			return o
		}
	}
	return nil
}

func findInGroup(g *flags.Group, match func(*flags.Option) bool) *flags.Option {
	for _, o := range g.Options() {
		if match(o) {
			return o
		}
	}
	for _, sub := range g.Groups() {
		if o := findInGroup(sub, match); o != nil {
			return o
		}
	}
	return nil
}

func findCommand(cmd *flags.Command, name string) *flags.Command {
	for _, sub := range cmd.Commands() {
		if sub.Name == name || contains(sub.Aliases, name) {
			return sub
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// takesArgument reports whether the option consumes a value: everything
// but switches (bool fields, or slices of bools, and callbacks without
// arguments).
func takesArgument(o *flags.Option) bool {
	t := o.Field().Type
	if t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return false
	case reflect.Func:
		return t.NumIn() > 0
	}
	return true
}

// repeatable reports whether giving the option again adds to it (slices,
// maps) or means the same (switches).
func repeatable(o *flags.Option) bool {
	switch o.Field().Type.Kind() {
	case reflect.Slice, reflect.Map, reflect.Func:
		return true
	}
	return !takesArgument(o)
}

func optionName(o *flags.Option) string {
	if o.LongName != "" {
		return "--" + o.LongNameWithNamespace()
	}
	return "-" + string(o.ShortName)
}
