package adapter

import "github.com/tapminiport/tapminiport/tapdev"

// OpenTAP is the default Opener: the hardware TAP by name, created when
// missing (tapdev says whether it created it).
func OpenTAP(name string) (Device, bool, error) {
	d, created, err := tapdev.OpenTAP(name, tapdev.Options{})
	if err != nil {
		return nil, false, err
	}
	return d, created, nil
}

// ConfigureTAP is the default Configure: MTU, bridge, link up, in the
// current namespace.
func ConfigureTAP(name string, mtu int, bridge string) error {
	return tapdev.ConfigureLink("", name, tapdev.LinkConfig{MTU: mtu, Up: true, Master: bridge})
}

// Offloads is what the hardware TAP takes unsegmented and without
// checksums when the adapter runs with VnetHdr: checksum, TSO4, TSO6.
const Offloads = tapdev.OffloadCsum | tapdev.OffloadTSO4 | tapdev.OffloadTSO6

// OpenTAPOffload is the Opener for Config.VnetHdr: the hardware TAP with
// IFF_VNET_HDR and TUNSETOFFLOAD(Offloads), so the wire's kernel hands the
// miniport 64 KiB TCP frames and partial checksums.
func OpenTAPOffload(name string) (Device, bool, error) {
	d, created, err := tapdev.OpenTAP(name, tapdev.Options{VnetHdr: true})
	if err != nil {
		return nil, false, err
	}
	if err := d.SetOffload(Offloads); err != nil {
		d.Close()
		return nil, false, err
	}
	return d, created, nil
}
