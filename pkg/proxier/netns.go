package proxier

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// sameNetnsAs returns a function that puts the goroutine calling it into
// the network namespace of the thread calling sameNetnsAs. iptables acts on
// the namespace of the thread that runs it, so a goroutine the sync loop
// starts must share the loop's namespace: a daemon lives in one namespace
// throughout, but tests and in-process nodes run loops on threads moved into
// other namespaces (and such a thread may even be the process's main one,
// so /proc/self/ns/net cannot tell). The goroutine stays locked to its
// thread, which Go discards when the goroutine ends. join may be called by
// several goroutines; release closes the namespace handle once they have.
func sameNetnsAs() (join func() error, release func(), err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return func() error {
			runtime.LockOSThread() // never unlocked: the thread leaves with the goroutine
			return unix.Setns(fd, unix.CLONE_NEWNET)
		}, func() {
			unix.Close(fd)
		}, nil
}
