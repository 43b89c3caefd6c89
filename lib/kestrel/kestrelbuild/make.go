//go:build ignore

// make.go builds kestrel for the Makefile, as package kestrelbuild states:
//
//	go run ./lib/kestrel/kestrelbuild/make.go -o bin/kestrel -version VERSION [-go GO]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/volantvm/volant/lib/kestrel/kestrelbuild"
)

func main() {
	var o kestrelbuild.Options
	flag.StringVar(&o.Out, "o", "", "the binary to write")
	flag.StringVar(&o.Version, "version", "", "the version to stamp")
	flag.StringVar(&o.Go, "go", "go", "the go command")
	flag.Parse()
	cmd, err := kestrelbuild.Command(context.Background(), o)
	if err == nil {
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "building kestrel:", err)
		os.Exit(1)
	}
}
