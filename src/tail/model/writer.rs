//! The model of lumberjack: a live file, rotation to keys (sometimes with the clock stepped
//! back), gzip of backups, pruning by key; and what the kernel answers about its files.

use super::L;
use crate::tail::file::Fingerprint;
use crate::tail::generation::{FdName, Key};
use crate::tail::plan::{Gen, Listed, Listing};
use std::collections::HashMap;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the kernel calls an inode now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Name {
    Live,
    /// A plain backup (its name stays in `/proc` with " (deleted)" once it is removed).
    Backup(Key),
    Gz,
}

pub struct Writer {
    /// Content (line numbers) by inode; `.gz` copies are inodes of their own.
    pub content: Vec<Vec<u64>>,
    pub name: Vec<Name>,
    /// The inode lumberjack writes to: always the live file.
    pub live: usize,
    pub backups: std::collections::BTreeMap<Key, (Option<usize>, Option<usize>)>,
    /// Every key ever made, and its plain inode.
    pub key_ino: HashMap<Key, usize>,
    /// The plain generation (inode) of each line.
    pub gen_of: Vec<usize>,
    pub clock: u64,
    pub used: Vec<Key>,
    pub stepped: bool,
    pub max_backup: usize,
    pub compress: bool,
    /// Live files created so far (what inotify would count).
    pub created: u64,
    /// Generations (plain inodes) pruned while an older one stayed: the clock had stepped
    /// back, and lumberjack prunes by key.
    pub pruned_out_of_order: Vec<usize>,
    /// Every generation (plain inode) pruned, in order.
    pub pruned: Vec<usize>,
    /// The live file of each creation, in order (`lives[0]` was there at the start).
    pub lives: Vec<usize>,
    /// The inode number of each inode, as listings show it.
    pub number: Vec<u64>,
    /// Inodes whose every name is deleted: their numbers are free once no descriptor holds
    /// them, and the filesystem may give them to the next file (ext4 does at once: a new
    /// `audit.log` takes the number of the plain backup deleted just before).
    gone: Vec<usize>,
    /// Inodes the reader holds open (set by the schedule before each writer step).
    pub pinned: Vec<usize>,
    /// Numbers of deleted inodes are reused (else every file has a number of its own).
    pub reuse: bool,
}

pub fn key_at(t: u64) -> Key {
    let s = format!(
        "2026-01-01T{:02}-{:02}-{:02}.{:03}",
        t / 3_600_000 % 24,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    );
    Key::parse(s.as_bytes()).expect("a well-formed key")
}

impl Writer {
    pub fn new(rng: &mut Rng) -> Writer {
        Writer {
            content: vec![Vec::new()],
            name: vec![Name::Live],
            live: 0,
            backups: Default::default(),
            key_ino: HashMap::new(),
            gen_of: Vec::new(),
            clock: 1_000_000,
            used: Vec::new(),
            stepped: false,
            max_backup: 1 + rng.below(4) as usize,
            compress: rng.chance(50),
            created: 0,
            pruned_out_of_order: Vec::new(),
            pruned: Vec::new(),
            lives: vec![0],
            number: vec![0],
            gone: Vec::new(),
            pinned: Vec::new(),
            // A bit of the seed, not a draw: the schedules of older seeds stay as they were.
            reuse: (rng.0 >> 17) & 1 == 1,
        }
    }

    /// A new file: the lowest free number of a deleted inode no descriptor holds, if reused.
    fn new_file(&mut self, content: Vec<u64>, name: Name) -> usize {
        let in_use = |i: usize| !self.gone.contains(&i) || self.pinned.contains(&i);
        let used: Vec<u64> = (0..self.number.len())
            .filter(|&i| in_use(i))
            .map(|i| self.number[i])
            .collect();
        let fresh = self.number.iter().max().map_or(0, |m| m + 1);
        let free = self
            .gone
            .iter()
            .map(|&i| self.number[i])
            .filter(|n| !used.contains(n))
            .min();
        let number = free.filter(|_| self.reuse).unwrap_or(fresh);
        self.content.push(content);
        self.name.push(name);
        self.number.push(number);
        self.content.len() - 1
    }

    pub fn lines(&self) -> u64 {
        self.gen_of.len() as u64
    }

    pub fn write(&mut self) {
        let seq = self.lines();
        self.content[self.live].push(seq);
        self.gen_of.push(self.live);
    }

    pub fn rotate(&mut self, rng: &mut Rng, step_back: bool) {
        if self.content[self.live].is_empty() {
            return;
        }
        let key = loop {
            self.clock += 10;
            let t = if step_back {
                self.clock.saturating_sub(10 * (1 + rng.below(4)) + 5)
            } else {
                self.clock
            };
            let k = key_at(t);
            if !self.used.contains(&k) {
                break k;
            }
        };
        if key < self.used.iter().copied().max().unwrap_or(key) {
            self.stepped = true;
        }
        self.used.push(key);
        self.name[self.live] = Name::Backup(key);
        self.backups.insert(key, (Some(self.live), None));
        self.key_ino.insert(key, self.live);
        self.live = self.new_file(Vec::new(), Name::Live);
        self.lives.push(self.live);
        self.created += 1;
    }

    /// One compression step: write a `.gz` of a plain backup, or delete a plain backup whose
    /// `.gz` is written.
    pub fn compress_step(&mut self, rng: &mut Rng) {
        let todo: Vec<Key> = self
            .backups
            .iter()
            .filter(|(_, (p, _))| p.is_some())
            .map(|(k, _)| *k)
            .collect();
        if todo.is_empty() {
            return;
        }
        let k = todo[rng.below(todo.len() as u64) as usize];
        let Some(&entry) = self.backups.get(&k) else {
            return;
        };
        match entry {
            (Some(p), None) => {
                let copy = self.content[p].clone();
                let gz = self.new_file(copy, Name::Gz);
                if let Some(entry) = self.backups.get_mut(&k) {
                    entry.1 = Some(gz);
                }
            }
            (Some(p), Some(gz)) => {
                self.backups.insert(k, (None, Some(gz)));
                self.gone.push(p);
            }
            _ => {}
        }
    }

    /// Deletes the oldest backups (by key) beyond `max_backup`, as lumberjack does.
    pub fn prune(&mut self) {
        while self.backups.len() > self.max_backup {
            let Some((k, (plain, gz))) = self.backups.pop_first() else {
                break;
            };
            self.gone.extend(plain.into_iter().chain(gz));
            let ino = self.key_ino[&k];
            self.pruned.push(ino);
            if self.backups.keys().any(|other| self.key_ino[other] < ino) {
                self.pruned_out_of_order.push(ino);
            }
        }
    }

    pub fn listing(&self) -> Listing {
        Listing {
            backups: self
                .backups
                .iter()
                .map(|(k, (p, g))| Listed {
                    key: *k,
                    plain: p.map(|i| (0, self.number[i])),
                    gz: g.is_some(),
                })
                .collect(),
            live: Some((
                (0, self.number[self.live]),
                self.content[self.live].len() as u64 * L,
            )),
        }
    }

    /// The file a generation is under now: (inode, gz).
    pub fn find(&self, g: Gen) -> Option<(usize, bool)> {
        match g {
            Gen::Live((_, n)) => (self.number[self.live] == n).then_some((self.live, false)),
            Gen::Backup(k) => match self.backups.get(&k)? {
                (Some(p), _) => Some((*p, false)),
                (None, Some(z)) => Some((*z, true)),
                (None, None) => None,
            },
        }
    }

    pub fn fp_of(&self, ino: usize) -> Fingerprint {
        match self.content[ino].first() {
            None => Fingerprint::of(&[]),
            // Audit lines are long: a file's first line covers a whole fingerprint.
            Some(&first) => Fingerprint {
                len: crate::tail::file::FINGERPRINT_LEN as u32,
                hash: first + 1,
            },
        }
    }

    pub fn confirms(&self, g: Gen, fp: Fingerprint) -> bool {
        self.find(g)
            .is_some_and(|(ino, _)| fp.len == 0 || self.fp_of(ino) == fp)
    }

    pub fn fd_name(&self, ino: usize) -> FdName {
        match self.name[ino] {
            Name::Live => FdName::Live,
            Name::Backup(k) => FdName::Backup(k),
            Name::Gz => FdName::Elsewhere,
        }
    }

    /// The plain generation (inode) a file holds (a `.gz` holds its backup's).
    pub fn gen_of_inode(&self, ino: usize) -> usize {
        match self.content[ino].first() {
            Some(&seq) => self.gen_of[seq as usize],
            None => ino,
        }
    }

    /// The plain generation (inode) of a generation as the plan names it.
    pub fn generation(&self, g: Gen) -> usize {
        match g {
            // The latest plain file with that number: the one the live name had last.
            Gen::Live((_, n)) => (0..self.number.len())
                .rev()
                .find(|&i| self.number[i] == n && self.name[i] != Name::Gz)
                .unwrap_or(0),
            Gen::Backup(k) => self.key_ino[&k],
        }
    }
}
