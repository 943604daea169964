// containerd's own snapshotter test suite (snapshots/testsuite, containerd
// 1.6 from Debian's golang-github-containerd-containerd-dev) run against the
// remote-snapshotter daemon over its unix socket through containerd's proxy
// snapshotter client (snapshots/proxy), the way containerd itself talks to
// a proxy plugin. Each subtest starts its own daemon (binary in
// $RSNAP_DAEMON) on a fresh root and stops it with SIGINT.
//
// Built by bins/remote-snapshotter/tests/containerd_testsuite.rs with
// GO111MODULE=off against Debian's Go sources; see that file.
package containerdtestsuite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestRemoteSnapshotter(t *testing.T) {
	bin := os.Getenv("RSNAP_DAEMON")
	if bin == "" {
		t.Fatal("RSNAP_DAEMON: path of the remote-snapshotter binary")
	}
	testsuite.SnapshotterSuite(t, "remote", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return start(bin, root)
	})
}

// start runs the daemon with its state in root and its socket beside it.
func start(bin, root string) (snapshots.Snapshotter, func() error, error) {
	dir := filepath.Dir(root)
	sock := filepath.Join(dir, "rs.sock")
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "--address", sock, "--root", root, "--config", "/dev/null", "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			logf.Close()
			return err
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			logf.Close()
			return fmt.Errorf("daemon did not stop on SIGINT")
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(filepath.Join(dir, "daemon.log"))
			return nil, nil, fmt.Errorf("daemon did not listen on %s: %s", sock, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The socket path as the target: grpc-go then sends it as :authority,
	// as containerd's own proxy plugin client does.
	conn, err := grpc.Dial("unix://"+sock,
		grpc.WithInsecure(),
		grpc.WithBlock(), grpc.WithTimeout(10*time.Second))
	if err != nil {
		stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "remote")
	return sn, func() error {
		err := sn.Close()
		conn.Close()
		if e := stop(); err == nil {
			err = e
		}
		return err
	}, nil
}
