// The rig's stargz snapshotter daemon (scripts/rig.sh lazy): the containerd stargz snapshotter
// of Debian's golang-github-containerd-stargz-snapshotter-dev, served as a containerd proxy
// plugin (the snapshots gRPC API on a unix socket). Debian ships the library but not upstream's
// containerd-stargz-grpc command; this is the least of it the rig needs: a TOML config
// (fs options and [resolver] hosts), anonymous registry access (no keychain: the rig's plain
// registry has no auth), no CRI labels (Debian does not package the CRI API; rig.sh builds
// from a copy of the source without them), no metrics endpoint.
//
// Built by scripts/rig.sh with golang-go in GOPATH mode and started by it as
//
//	flops-stargz-grpc -address SOCK -root DIR -config FILE
//
// SIGINT or SIGTERM unmounts every layer it mounted, removes their directories and exits: the
// snapshotter's own restore of remote snapshots at start would then fail, so rig.sh starts
// this daemon on an empty root and an emptied lazy node every time.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/flops-rig/stargz/containerd-stargz-grpc.sock", "unix socket of the snapshots gRPC API")
	root := flag.String("root", "/var/lib/flops-rig/stargz", "the snapshotter's root directory")
	configPath := flag.String("config", "", "TOML config (the fs options of stargz-snapshotter 0.12 and [resolver.host.\"HOST\"] mirrors)")
	logLevel := flag.String("log-level", "info", "trace, debug, info, warn or error")
	flag.Parse()

	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		fatal("bad -log-level: %v", err)
	}
	logrus.SetLevel(lvl)
	logrus.SetFormatter(&logrus.JSONFormatter{TimestampFormat: log.RFC3339NanoFixed})
	ctx := log.WithLogger(context.Background(), log.L)

	var config service.Config
	if *configPath != "" {
		tree, err := toml.LoadFile(*configPath)
		if err != nil {
			fatal("reading %s: %v", *configPath, err)
		}
		if err := tree.Unmarshal(&config); err != nil {
			fatal("parsing %s: %v", *configPath, err)
		}
	}
	log.G(ctx).Infof("config: %+v", config)

	sn, err := service.NewStargzSnapshotterService(ctx, *root, &config)
	if err != nil {
		fatal("starting the stargz snapshotter on %s: %v", *root, err)
	}

	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		fatal("%v", err)
	}
	if err := os.RemoveAll(*address); err != nil { // a socket left by an earlier run
		fatal("%v", err)
	}
	l, err := net.Listen("unix", *address)
	if err != nil {
		fatal("listening on %s: %v", *address, err)
	}
	served := make(chan error, 1)
	go func() { served <- rpc.Serve(l) }()
	log.G(ctx).Infof("serving the stargz snapshotter on %s (root %s)", *address, *root)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	code := 0
	select {
	case s := <-sig:
		log.G(ctx).Infof("got %v: unmounting and exiting", s)
	case err := <-served:
		log.G(ctx).WithError(err).Error("the gRPC server stopped")
		code = 1
	}
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("closing the snapshotter")
	}
	os.Exit(code)
}

func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "flops-stargz-grpc: "+format+"\n", args...)
	os.Exit(1)
}
