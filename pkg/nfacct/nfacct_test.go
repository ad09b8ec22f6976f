package nfacct

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// inNewNetns runs fn on a thread in a new, empty network namespace (nfacct
// objects are per namespace), so the test touches nothing of the host's.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, namespace and all
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// Against the real kernel: create, read, count packets of a rule that
// names the counter.
func TestNetlinkCountersCountPackets(t *testing.T) {
	inNewNetns(t, func() {
		var acct Netlink
		if _, err := acct.Packets("swy_test_pkts"); !errors.Is(err, ErrNotFound) {
			t.Errorf("a missing counter: %v, want ErrNotFound", err)
			return
		}
		if err := acct.Ensure("swy_test_pkts"); err != nil {
			t.Skipf("this kernel has no nfacct: %v", err)
		}
		if err := acct.Ensure("swy_test_pkts"); err != nil {
			t.Errorf("Ensure on an existing counter: %v", err)
		}
		n, err := acct.Packets("swy_test_pkts")
		if err != nil || n != 0 {
			t.Errorf("new counter: %d %v", n, err)
		}
		// A rule counting loopback packets: the thread is in the new
		// namespace, and a child started from it inherits it.
		for _, args := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"iptables", "-A", "OUTPUT", "-o", "lo", "-m", "nfacct", "--nfacct-name", "swy_test_pkts"},
		} {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Skipf("%v: %v: %s", args, err, out)
			}
		}
		for i := 0; i < 3; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err != nil {
				t.Error(err)
				return
			}
			_ = unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}})
			unix.Close(fd)
		}
		if n, err := acct.Packets("swy_test_pkts"); err != nil || n < 3 {
			t.Errorf("after 3 packets: %d %v", n, err)
		}
	})
}

func TestNamesAreChecked(t *testing.T) {
	if err := (Netlink{}).Ensure(""); err == nil {
		t.Error("an empty name must be refused")
	}
	if err := (Netlink{}).Ensure("a_name_much_longer_than_the_kernel_allows"); err == nil {
		t.Error("a name over 31 bytes must be refused")
	}
}
