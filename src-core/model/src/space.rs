//! The integer space a pool's addresses are indexed in. With `avoid_buggy_ips` on IPv4,
//! `.0` and `.255` have no image at all, so skipping them costs nothing.

use crate::{AddressRange, Family, Pool};

/// Maps the addresses of one family of one pool onto consecutive integers.
/// With `avoid_buggy_ips` on IPv4, `.0` and `.255` have no image: x.y.z.1 ↦ 254·(x.y.z) + 0 …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    skip_buggy: bool,
}

impl Space {
    pub fn of(pool: &Pool, family: Family) -> Space {
        Space { skip_buggy: pool.options.avoid_buggy_ips && family == Family::V4 }
    }
    /// The space that skips `.0`/`.255` (`true`) or maps every address (`false`).
    pub fn new(skip_buggy: bool) -> Space {
        Space { skip_buggy }
    }
    pub fn to_dense(self, v: u128) -> Option<u128> {
        if !self.skip_buggy {
            return Some(v);
        }
        let low = v & 0xff;
        if low == 0 || low == 255 {
            None
        } else {
            Some((v >> 8) * 254 + (low - 1))
        }
    }
    pub fn from_dense(self, d: u128) -> u128 {
        if !self.skip_buggy {
            return d;
        }
        ((d / 254) << 8) | (d % 254 + 1)
    }
    /// The dense image of a range, or `None` when it holds no usable address.
    pub fn dense(self, r: &AddressRange) -> Option<(u128, u128)> {
        let (mut a, mut b) = (r.first_raw(), r.last_raw());
        if self.skip_buggy {
            match a & 0xff {
                0 => a += 1,
                255 => a += 2,
                _ => {}
            }
            match b & 0xff {
                255 => b = b.checked_sub(1)?,
                0 => b = b.checked_sub(2)?,
                _ => {}
            }
            if a > b {
                return None;
            }
            return Some((self.to_dense(a)?, self.to_dense(b)?));
        }
        Some((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::u128_to_ip;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn dense_space_skips_buggy_addresses() {
        let sp = Space::new(true);
        let r = AddressRange::new(ip("192.0.2.0"), ip("192.0.3.255")).unwrap();
        let (a, b) = sp.dense(&r).unwrap();
        assert_eq!(b - a + 1, 2 * 254, "two /24s hold 254 usable addresses each");
        assert_eq!(u128_to_ip(Family::V4, sp.from_dense(a)), ip("192.0.2.1"));
        assert_eq!(u128_to_ip(Family::V4, sp.from_dense(a + 254)), ip("192.0.3.1"));
        assert_eq!(u128_to_ip(Family::V4, sp.from_dense(b)), ip("192.0.3.254"));
        for d in a..=b {
            let v = sp.from_dense(d);
            assert_eq!(sp.to_dense(v), Some(d), "the mapping is a bijection on usable addresses");
        }
        let none = AddressRange::new(ip("192.0.2.255"), ip("192.0.3.0")).unwrap();
        assert_eq!(sp.dense(&none), None);
        let low = AddressRange::new(ip("0.0.0.0"), ip("0.0.0.0")).unwrap();
        assert_eq!(sp.dense(&low), None, "no underflow at the bottom of the space");
    }
}
