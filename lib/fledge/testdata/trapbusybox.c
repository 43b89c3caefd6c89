/* A "busybox" that must never run on the build host: executed, it leaves
 * a marker file (MARKER, set at compile time) and lists an applet no real
 * table holds. Its applet tables are laid out as busybox's
 * applets/applet_tables.c writes them: the names sorted, each ending in a
 * NUL, the list ending in an empty name; the install directories two to a
 * byte (low nibble first; 1 /bin, 2 /sbin, 3 /usr/bin, 4 /usr/sbin). */
#include <stdio.h>
#include <stdint.h>

__attribute__((used)) const char applet_names[] =
	"[" "\0" "cat" "\0" "env" "\0" "ifconfig" "\0" "ls" "\0" "sh" "\0" "trapped" "\0";
/* [ usr/bin, cat bin | env usr/bin, ifconfig sbin | ls bin, sh bin | trapped usr/sbin */
__attribute__((used)) const uint8_t applet_install_loc[] = { 0x13, 0x23, 0x11, 0x04 };

int main(void) {
	FILE *f = fopen(MARKER, "w");
	if (f) {
		fputs("executed\n", f);
		fclose(f);
	}
	puts("bin/evil");
	return 0;
}
